use crate::{output, CmdResult, Failure, Global};
use cairn_repo::check::{check, CheckOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Also read, decrypt and verify every stored object
    #[arg(long)]
    read_data: bool,
    /// Verify N% of the objects, continuing where the last run stopped (e.g. 10%)
    #[arg(long, value_name = "N%")]
    read_data_subset: Option<String>,
}

fn parse_percent(s: &str) -> Result<f64, Failure> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| {
        Failure::usage(format!(
            "--read-data-subset: `{s}` is not a percentage like 10%"
        ))
    })?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(Failure::usage(
            "--read-data-subset takes a percentage above 0 and at most 100",
        ));
    }
    Ok(v)
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let subset = a
        .read_data_subset
        .as_deref()
        .map(parse_percent)
        .transpose()?;
    let opts = CheckOptions {
        read_data: a.read_data,
        subset_percent: subset,
    };
    let report = check(&repo, &opts)?;
    let s = &report.space;
    if g.json {
        output::json(&serde_json::json!({
            "snapshots": report.snapshots, "trees": report.trees, "objects": report.objects,
            "objects_read": report.objects_read, "bytes_read": report.bytes_read,
            "space": crate::stats::space_json(s),
            "damaged": report.damaged.iter().map(|d| serde_json::json!({
                "id": d.id.to_hex(), "problem": d.problem, "uses": d.uses,
                "used_by": d.used_by.iter().map(|(snap, p)| serde_json::json!({"snapshot": snap.to_hex(), "path": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ok": report.damaged.is_empty(),
        }));
    } else {
        output::info(
            g,
            &format!(
                "{} snapshots, {} trees, {} objects checked for structure",
                report.snapshots, report.trees, report.objects
            ),
        );
        if report.objects_read > 0 {
            output::info(
                g,
                &format!(
                    "{} objects ({}) read and verified",
                    report.objects_read,
                    output::bytes(report.bytes_read)
                ),
            );
        }
        output::info(
            g,
            &format!(
                "space: {} stored in a {} file (file/stored {:.3})",
                output::bytes(s.object_bytes),
                output::bytes(s.file_bytes),
                crate::stats::overhead(s)
            ),
        );
        for d in &report.damaged {
            output::line(&format!("damaged object {}: {}", d.id, d.problem));
            for (snap, p) in &d.used_by {
                output::line(&format!("  used by snapshot {} at {}", snap.short(), p));
            }
            if d.uses > d.used_by.len() as u64 {
                output::line(&format!(
                    "  … and {} more uses",
                    d.uses - d.used_by.len() as u64
                ));
            }
        }
    }
    if report.damaged.is_empty() {
        output::info(g, "no errors found");
        Ok(0)
    } else {
        Err(Failure::fatal(format!(
            "{} damaged or missing objects; see above",
            report.damaged.len()
        )))
    }
}
