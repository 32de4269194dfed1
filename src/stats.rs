use crate::{output, CmdResult, Global};
use cairn_repo::storage::Space;

#[derive(clap::Args)]
pub struct Args {}

pub fn space_json(s: &Space) -> serde_json::Value {
    serde_json::json!({
        "objects": s.objects,
        "object_bytes": s.object_bytes,
        "pack_bytes": s.pack_bytes,
        "file_bytes": s.file_bytes,
        "file_length": s.file_len,
        "db_bytes": s.db_bytes,
        "free_in_file_bytes": s.free_in_file(),
        "overhead_ratio": overhead(s),
    })
}

/// Size of the database file relative to the sealed bytes it stores (1.0 = no waste).
pub fn overhead(s: &Space) -> f64 {
    if s.object_bytes == 0 {
        return 0.0;
    }
    s.file_bytes as f64 / s.object_bytes as f64
}

pub fn run(g: &Global, _a: &Args) -> CmdResult {
    let repo = g.open()?;
    let space = repo.storage().space()?;
    let snaps = repo.snapshots()?;
    let logical: u64 = snaps.iter().map(|s| s.snapshot.stats.bytes).sum();
    if g.json {
        output::json(&serde_json::json!({
            "snapshots": snaps.len(),
            "logical_bytes": logical,
            "space": space_json(&space),
        }));
        return Ok(0);
    }
    output::line(&format!("snapshots:            {}", snaps.len()));
    output::line(&format!("objects:              {}", space.objects));
    output::line(&format!("data in snapshots:    {}", output::bytes(logical)));
    output::line(&format!(
        "stored (sealed):      {}",
        output::bytes(space.object_bytes)
    ));
    output::line(&format!(
        "repository file:      {}",
        output::bytes(space.file_bytes)
    ));
    if let (Some(used), Some(free)) = (space.db_bytes, space.free_in_file()) {
        output::line(&format!("  in use:             {}", output::bytes(used)));
        output::line(&format!(
            "  free inside:        {} (reused by later writes; `prune --compact` gives it back)",
            output::bytes(free)
        ));
    }
    output::line(&format!("file / stored:        {:.3}", overhead(&space)));
    if space.object_bytes > 0 {
        output::line(&format!(
            "dedup+compression:    {:.2}x",
            logical as f64 / space.object_bytes as f64
        ));
    }
    Ok(0)
}
