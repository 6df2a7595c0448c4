//! Where operations are kept: `<repo>/mkchange/<id>.json`, written atomically after each
//! change of state, and read back for a re-run.

#[allow(unused_imports)]
use super::*;

pub(super) fn dir(w: &Writer<'_>) -> PathBuf {
    w.repository().path().join("mkchange")
}

pub(super) fn op_path(w: &Writer<'_>, id: &str) -> PathBuf {
    dir(w).join(format!("{id}.json"))
}

pub(super) fn io(action: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> ZkeyError {
    move |source| ZkeyError::io(action, path, source)
}

/// Every operation of the repository, oldest first.
pub fn list(w: &crate::repository::Reader<'_>) -> Result<Vec<Operation>, ZkeyError> {
    let d = w.repository().path().join("mkchange");
    let mut out = Vec::new();
    // A link there (a group member's) would have root read, and write, another directory.
    durable::refuse_link_at(&d).map_err(io("reading", d.clone()))?;
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("reading", d)(e)),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = durable::read_nofollow(&p).map_err(io("reading", p.clone()))?;
            let op: Operation = serde_json::from_slice(&text).map_err(|e| {
                ZkeyError::Invalid(format!(
                    "{} is damaged: {e}; restore it from a backup",
                    p.display()
                ))
            })?;
            out.push(op);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

pub fn load(r: &crate::repository::Reader<'_>, id: &str) -> Result<Operation, ZkeyError> {
    list(r)?.into_iter().find(|o| o.id == id).ok_or_else(|| {
        ZkeyError::Invalid(format!(
            "no master key change operation '{id}': 'zkey mkchange list' shows them"
        ))
    })
}

pub(super) fn save(w: &Writer<'_>, op: &mut Operation) -> Result<(), ZkeyError> {
    w.changing()?;
    op.updated = ap_sim::audit::utc_now();
    let d = dir(w);
    durable::refuse_link_at(&d).map_err(io("writing", d.clone()))?;
    if !d.exists() {
        std::fs::create_dir_all(&d).map_err(io("creating", d.clone()))?;
        durable::sync_dir(w.repository().path()).map_err(io("syncing", d.clone()))?;
    }
    let data = serde_json::to_vec_pretty(op).expect("an operation serialises");
    let p = op_path(w, &op.id);
    durable::write_atomic(&p, &data, w.repository().file_mode()).map_err(io("writing", p))
}
