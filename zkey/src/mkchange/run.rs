//! The steps: `start` stages, `finalize` completes after the SET, `cancel` removes the
//! stages; each moves the operation through [`State::next`](super::State::next), saves it
//! after every item, and writes its audit record.

#[allow(unused_imports)]
use super::*;

pub(super) fn new_id() -> String {
    let t = ap_sim::audit::utc_now();
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    let mut r = [0u8; 2];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut r);
    format!("{}-{}", &digits[..14], hex::encode(r))
}

/// Starts (or resumes) an operation: stages every affected key. Refuses when the plan is not
/// ready, unless `resume` names an operation that is already under way.
pub fn start(
    w: &Writer<'_>,
    ad: &Adapters,
    req: &Request,
    dry_run: bool,
) -> Result<(Operation, Plan), ZkeyError> {
    let intent = step_intent(
        "start",
        &req.apqns,
        "stages every affected key for a new master key".into(),
    );
    audited(
        w,
        ad,
        "start",
        dry_run,
        intent,
        || start_steps(w, ad, req, dry_run),
        |(op, _)| op,
    )
}

pub(super) fn start_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    req: &Request,
    dry_run: bool,
) -> Result<(Operation, Plan), ZkeyError> {
    // An operation for exactly these APQNs and types that did not get to the end is resumed.
    // An operation for exactly these APQNs and types that is not finalized yet is resumed: a
    // re-run after a crash (or after fixing a failed key) stages what is not staged yet.
    let resumable = list(w)?.into_iter().find(|o| {
        o.state.next(Step::Stage).is_ok()
            && o.apqns == req.apqns
            && o.mktypes().collect::<Vec<_>>() == req.types
    });
    let mut p = plan_besides(w, ad, req, resumable.as_ref().map(|o| o.id.as_str()))?;
    if !p.ready() {
        let failed: Vec<String> = p
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("- {}: {}", c.check, c.detail))
            .collect();
        // The same cross-check table every staging command prints, for the types whose NEW
        // registers are not ready.
        let mut tables = String::new();
        for &t in &req.types {
            if let Err(nr) = ap_sim::crosscheck::require_new(&ad.sysfs, t, &req.apqns)? {
                tables.push_str(&format!("\n{t}: {nr}"));
            }
        }
        return Err(ZkeyError::Invalid(format!(
            "the master key change cannot start; nothing was changed:\n{}{tables}",
            failed.join("\n")
        )));
    }
    let now = ap_sim::audit::utc_now();
    let mut op = resumable.unwrap_or_else(|| Operation {
        id: new_id(),
        state: State::Initial,
        created: now.clone(),
        updated: now,
        apqns: req.apqns.clone(),
        types: p.types.clone(),
        keys: Vec::new(),
        volumes: Vec::new(),
        plugin_keys: Vec::new(),
        error: None,
    });
    for k in &p.plugin_keys {
        if !op.plugin_keys.iter().any(|i| i.key == k.key) {
            op.plugin_keys.push(PluginItem {
                mktype: k.mktype,
                key: k.key.clone(),
                state: ItemState::Pending,
                error: None,
            });
        }
    }
    for k in &p.keys {
        for v in &k.luks2_volumes {
            if !op.volumes.iter().any(|i| i.volume == v.volume) {
                op.volumes.push(VolumeItem {
                    key: k.name.clone(),
                    volume: v.volume.clone(),
                    state: ItemState::Pending,
                    passphrase_known: v.passphrase_known,
                    error: None,
                });
            }
        }
        if !op.keys.iter().any(|i| i.name == k.name) {
            op.keys.push(KeyItem {
                name: k.name.clone(),
                mktype: k.mktype,
                state: ItemState::Pending,
                error: None,
            });
        }
    }
    if dry_run {
        return Ok((op, std::mem::take(&mut p)));
    }
    save(w, &mut op)?;
    advance(&mut op, Step::Stage)?;
    save(w, &mut op)?;
    for i in 0..op.keys.len() {
        if op.keys[i].state == ItemState::Staged {
            continue;
        }
        stage_item(w, ad, &mut op.keys[i]);
        save(w, &mut op)?;
    }
    volumes_and_plugin_keys(w, ad, &mut op, false)?;
    let failed = op.plugin_keys.iter().any(|p| p.state == ItemState::Failed)
        || !op.not_staged().is_empty()
        || op.volumes.iter().any(|v| v.state == ItemState::Failed);
    advance(&mut op, Step::Staged { failed })?;
    op.error = failed.then(|| "some keys or volumes could not be staged: see their errors, fix them and run 'zkey mkchange start' again".into());
    save(w, &mut op)?;
    Ok((op, p))
}

pub(super) fn stage_item(w: &Writer<'_>, ad: &Adapters, item: &mut KeyItem) {
    let res = w.entry(&item.name).map_err(ZkeyError::from).and_then(|e| {
        reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: Some(Way::ToNew),
                mode: Some(Mode::Staged),
            },
        )
    });
    match res {
        Ok(Outcome::Staged { .. }) => {
            item.state = ItemState::Staged;
            item.error = None;
        }
        Ok(Outcome::Skipped { reason }) | Ok(Outcome::Failed { error: reason }) => {
            item.state = ItemState::Failed;
            item.error = Some(reason);
        }
        Ok(_) => item.state = ItemState::Staged,
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}

/// Stages a key made while an operation is open on its APQNs and master key type, and adds it
/// to that operation. Returns the operation's id, if any.
pub fn stage_new_key(
    w: &Writer<'_>,
    ad: &Adapters,
    e: &KeyEntry,
) -> Result<Option<String>, ZkeyError> {
    for mut op in list(w)? {
        if !op.state.takes_new_keys() {
            continue;
        }
        let Some(t) = affected(e, &op.apqns, &op.types) else {
            continue;
        };
        let mut item = KeyItem {
            name: e.name.clone(),
            mktype: t,
            state: ItemState::Pending,
            error: None,
        };
        stage_item(w, ad, &mut item);
        op.keys.retain(|k| k.name != item.name);
        op.keys.push(item);
        if e.properties.volume_type == VolumeType::Luks2 {
            for v in &e.properties.volumes {
                let mut vi = VolumeItem {
                    key: e.name.clone(),
                    volume: v.to_string(),
                    state: ItemState::Pending,
                    passphrase_known: e.has_pass,
                    error: None,
                };
                if vi.passphrase_known {
                    volume_step(w, ad, &mut vi, Mode::Staged);
                }
                op.volumes.retain(|x| x.volume != vi.volume);
                op.volumes.push(vi);
            }
        }
        save(w, &mut op)?;
        return Ok(Some(op.id));
    }
    Ok(None)
}

/// The intent of a step: what it will change.
fn step_intent(step: &str, apqns: &[ap_sim::Apqn], change: String) -> ap_sim::audit::Event {
    ap_sim::audit::Event {
        event: format!("mkchange-{step}"),
        command: format!("zkey mkchange {step}"),
        apqns: apqns.to_vec(),
        details: Some(change),
        ..Default::default()
    }
}

/// Runs a step of the operation (start, finalize, cancel) between its intent and its result
/// (none for a dry run, which changes nothing).
fn audited<T>(
    w: &Writer<'_>,
    ad: &Adapters,
    step: &str,
    dry_run: bool,
    intent: ap_sim::audit::Event,
    act: impl FnOnce() -> Result<T, ZkeyError>,
    op: impl Fn(&T) -> &Operation,
) -> Result<T, ZkeyError> {
    crate::audit::audited(w, ad, intent, act, |t| {
        if dry_run {
            Vec::new()
        } else {
            vec![step_event(op(t), step)]
        }
    })
}

/// The result record of a step of the operation.
fn step_event(op: &Operation, step: &str) -> ap_sim::audit::Event {
    let t = op.types.first();
    {
        ap_sim::audit::Event {
            event: format!("mkchange-{step}"),
            command: format!("zkey mkchange {step}"),
            apqns: op.apqns.clone(),
            mktype: t.map(|t| t.mktype),
            old_mkvp: t.and_then(|t| t.old_mkvp),
            new_mkvp: t.and_then(|t| t.new_mkvp),
            keys: op.keys.iter().map(|k| k.name.to_string()).collect(),
            result: match op.state {
                State::Error => format!(
                    "failed: {}",
                    op.error.as_deref().unwrap_or("see the operation")
                ),
                s => format!("ok: {s:?}").to_lowercase(),
            },
            details: Some(format!("operation {}", op.id)),
        }
    }
}

/// After the SET: completes every key, keeping the previous secure keys as a backup.
pub fn finalize(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let intent = step_intent(
        "finalize",
        &load(w, id)?.apqns,
        format!("completes every key of operation {id} after the SET"),
    );
    audited(
        w,
        ad,
        "finalize",
        dry_run,
        intent,
        || finalize_steps(w, ad, id, dry_run),
        |op| op,
    )
}

pub(super) fn finalize_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let mut op = load(w, id)?;
    // A re-run after a crash that came after the last step has nothing left to do.
    if op.state == State::Done {
        return Ok(op);
    }
    if let Err(why) = op.state.next(Step::Finalize) {
        return Err(ZkeyError::Invalid(format!("operation {id}: {why}")));
    }
    let list = ap_sim::apqn::format_list;
    for s in set_status(ad, &op)? {
        if !s.unexpected.is_empty() {
            return Err(ZkeyError::Invalid(format!(
                "{}: the CURRENT master key of {} is neither the old nor the announced new key: a different key was set; nothing was changed",
                s.mktype,
                list(&s.unexpected)
            )));
        }
        if !s.not_set_on.is_empty() {
            let what = if s.set_on.is_empty() {
                "the SET has not been done yet".to_string()
            } else {
                format!(
                    "the SET was done on {} but not on {}",
                    list(&s.set_on),
                    list(&s.not_set_on)
                )
            };
            return Err(ZkeyError::Invalid(format!(
                "{}: {what}: the security officer must SET the new {} master key on {} first; nothing was changed",
                s.mktype,
                s.mktype,
                list(&s.not_set_on)
            )));
        }
    }
    if dry_run {
        return Ok(op);
    }
    advance(&mut op, Step::Finalize)?;
    save(w, &mut op)?;
    let backup_dir = dir(w).join(&op.id);
    for i in 0..op.keys.len() {
        if op.keys[i].state == ItemState::Completed {
            continue;
        }
        let res = finalize_item(w, ad, &backup_dir, &op.keys[i]);
        let item = &mut op.keys[i];
        match res {
            Ok(()) => {
                item.state = ItemState::Completed;
                item.error = None;
            }
            Err(e) => {
                item.state = ItemState::Failed;
                item.error = Some(e.to_string());
            }
        }
        save(w, &mut op)?;
    }
    volumes_and_plugin_keys(w, ad, &mut op, true)?;
    let mut failed: Vec<String> = op
        .keys
        .iter()
        .filter(|k| k.state != ItemState::Completed)
        .map(|k| k.name.to_string())
        .collect();
    failed.extend(
        op.plugin_keys
            .iter()
            .filter(|p| p.state != ItemState::Completed)
            .map(|p| p.key.clone()),
    );
    failed.extend(
        op.volumes
            .iter()
            .filter(|v| v.passphrase_known && v.state != ItemState::Completed)
            .map(|v| v.volume.clone()),
    );
    advance(
        &mut op,
        Step::Finalized {
            failed: !failed.is_empty(),
        },
    )?;
    if failed.is_empty() {
        op.error = None;
        drop_older_backups(w, &op.id)?;
    } else {
        op.error = Some(format!(
            "not completed: {}; fix them and run 'zkey mkchange finalize -i {}' again",
            failed.join(", "),
            op.id
        ));
    }
    save(w, &mut op)?;
    Ok(op)
}

pub(super) fn finalize_item(
    w: &Writer<'_>,
    ad: &Adapters,
    backup_dir: &std::path::Path,
    item: &KeyItem,
) -> Result<(), ZkeyError> {
    let name = &item.name;
    let e = w.entry(name)?;
    // Keep the previous secure key (still valid under OLD for CCA) until the next change.
    if e.staged.is_some() {
        durable::refuse_link_at(backup_dir)
            .and_then(|()| std::fs::create_dir_all(backup_dir))
            .map_err(io("creating", backup_dir.to_path_buf()))?;
        let b = backup_dir.join(format!("{}.skey", item.name));
        if !b.exists() {
            w.changing()?;
            durable::write_atomic(&b, &e.secure_key, w.repository().file_mode())
                .map_err(io("writing", b))?;
        }
    }
    let out = match e.staged {
        Some(_) => reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: None,
                mode: Some(Mode::Complete),
            },
        )?,
        // Not staged (e.g. made while the SET happened): a CCA key under OLD goes in place.
        None => reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: None,
                mode: None,
            },
        )?,
    };
    if let Outcome::Failed { error } = out {
        return Err(ZkeyError::Invalid(error));
    }
    // Verify under the new CURRENT key.
    let e = w.entry(name)?;
    let key = SecureKey::parse(&e.secure_key)?;
    let within = (!e.properties.apqns.is_empty()).then_some(e.properties.apqns.as_slice());
    match ad.hsm.verify(&key, within) {
        Ok(v) if v.register == Register::Current => Ok(()),
        Ok(_) => Err(ZkeyError::Invalid("the key is still under the OLD master key".into())),
        Err(HsmError::Unusable { .. }) => Err(ZkeyError::Invalid("the key is unusable: it was not staged before the SET; restore it from a backup or a KMS".into())),
        Err(e) => Err(e.into()),
    }
}

/// Backups are kept until the next change is finalized: then the older ones go.
pub(super) fn drop_older_backups(w: &Writer<'_>, keep: &str) -> Result<(), ZkeyError> {
    for op in list(w)? {
        let d = dir(w).join(&op.id);
        if op.id != keep && !op.state.is_open() && d.is_dir() {
            std::fs::remove_dir_all(&d).map_err(io("removing", d))?;
        }
    }
    Ok(())
}

/// Cancels an operation while no APQN has the new key set: removes the staged copies.
pub fn cancel(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let intent = step_intent(
        "cancel",
        &load(w, id)?.apqns,
        format!("removes the staged keys of operation {id}"),
    );
    audited(
        w,
        ad,
        "cancel",
        dry_run,
        intent,
        || cancel_steps(w, ad, id, dry_run),
        |op| op,
    )
}

pub(super) fn cancel_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let mut op = load(w, id)?;
    // A re-run after a crash that came after the last step has nothing left to do.
    if op.state == State::Canceled {
        return Ok(op);
    }
    if let Err(why) = op.state.next(Step::Cancel) {
        return Err(ZkeyError::Invalid(format!("operation {id}: {why}")));
    }
    for s in set_status(ad, &op)? {
        if !s.set_on.is_empty() {
            return Err(ZkeyError::Invalid(format!(
                "{}: the new master key is already set on {}: the change cannot be cancelled any more; finalize it with 'zkey mkchange finalize -i {id}'",
                s.mktype,
                ap_sim::apqn::format_list(&s.set_on)
            )));
        }
    }
    if dry_run {
        return Ok(op);
    }
    advance(&mut op, Step::Cancel)?;
    save(w, &mut op)?;
    for k in op.keys.iter_mut() {
        match w.remove_staged(&k.name) {
            Ok(_) | Err(crate::RepoError::KeyNotFound { .. }) => k.state = ItemState::Pending,
            Err(e) => {
                k.state = ItemState::Failed;
                k.error = Some(e.to_string());
            }
        }
    }
    for v in op
        .volumes
        .iter_mut()
        .filter(|v| v.state == ItemState::Staged)
    {
        // The volume's staged slot is harmless while its token is pending; the next staged
        // re-encipher of the volume replaces it.
        v.state = ItemState::Pending;
        v.error = Some(format!("its staged keyslot is left pending: the next 'zkey-cryptsetup reencipher {} --staged' replaces it", device_of(&v.volume)));
    }
    let failed = !op.keys.iter().all(|k| k.state == ItemState::Pending);
    advance(&mut op, Step::Canceled { failed })?;
    save(w, &mut op)?;
    Ok(op)
}

/// Stages (or completes) every volume zkey can open and every plug-in key not done yet,
/// saving the operation after each, so that a re-run continues where a crash stopped.
pub(super) fn volumes_and_plugin_keys(
    w: &Writer<'_>,
    ad: &Adapters,
    op: &mut Operation,
    complete: bool,
) -> Result<(), ZkeyError> {
    let (done, mode) = if complete {
        (ItemState::Completed, Mode::Complete)
    } else {
        (ItemState::Staged, Mode::Staged)
    };
    for i in 0..op.volumes.len() {
        if op.volumes[i].state != done && op.volumes[i].passphrase_known {
            volume_step(w, ad, &mut op.volumes[i], mode);
            save(w, op)?;
        }
    }
    for i in 0..op.plugin_keys.len() {
        if op.plugin_keys[i].state != done {
            plugin_step(w, ad, &mut op.plugin_keys[i], complete);
            save(w, op)?;
        }
    }
    Ok(())
}

pub(super) fn device_of(volume: &str) -> String {
    crate::crypttab::volume_device(volume).display().to_string()
}

/// Answers a master key change's questions about a volume: yes to re-enciphering again, no to
/// destroying the previous key's keyslot, which stays as the backup until the next change.
pub(super) struct OperationUi;

impl zkey_cryptsetup::Ui for OperationUi {
    fn info(&mut self, _msg: &str) {}
    fn warn(&mut self, _msg: &str) {}
    fn confirm(&mut self, _question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        Ok(true)
    }
    fn confirm_destroy(&mut self, _question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        Ok(false)
    }
}

/// Stages or completes a volume's header copy of the key, opening it with the key's dummy
/// passphrase.
pub(super) fn volume_step(w: &Writer<'_>, ad: &Adapters, item: &mut VolumeItem, mode: Mode) {
    use zkey_cryptsetup::passphrase::{Passphrase, Source, Supplier};
    let res = (|| -> Result<(), ZkeyError> {
        let name = &item.key;
        let pass = w.read_pass(name)?;
        let mut supplier = Supplier::new(Source::Given(Passphrase::new(pass.to_vec())));
        let device = device_of(&item.volume);
        let opts = reencipher::Request {
            mode: Some(mode),
            way: (mode == Mode::Staged).then_some(Way::ToNew),
        };
        zkey_cryptsetup::reencipher::reencipher(
            &ad.hsm,
            std::path::Path::new(&device),
            opts,
            &mut supplier,
            &mut OperationUi,
        )
        .map_err(|e| ZkeyError::Invalid(e.to_string()))?;
        Ok(())
    })();
    match res {
        Ok(()) => {
            item.state = if mode == Mode::Complete {
                ItemState::Completed
            } else {
                ItemState::Staged
            };
            item.error = None;
        }
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}

/// Stages (before the SET) or completes (after it) one plug-in key through the plug-in. A
/// complete re-run after a crash finds nothing staged: the key is then checked to be CURRENT.
pub(super) fn plugin_step(w: &Writer<'_>, ad: &Adapters, item: &mut PluginItem, complete: bool) {
    use zkey_kms_protocol::{MkDirection, ReencipherMode};
    let t = Some(item.mktype);
    // Staging must stage: a key the plug-in skipped (no NEW master key of its type loaded)
    // is not staged for this change.
    let run = |mode, direction| {
        let (rep, _) = crate::kms::reencipher(w, ad, mode, direction, t)?;
        match rep.keys.iter().find(|k| !complete && !k.changed()) {
            Some(k) => Err(ZkeyError::Invalid(format!(
                "{}: {}: {}",
                k.key, k.action, k.detail
            ))),
            None => Ok(rep),
        }
    };
    let res = if complete {
        run(ReencipherMode::Complete, MkDirection::Auto)
            .or_else(|_| run(ReencipherMode::InPlace, MkDirection::FromOld))
    } else {
        run(ReencipherMode::Staged, MkDirection::ToNew)
    };
    match res {
        Ok(_) => {
            item.state = if complete {
                ItemState::Completed
            } else {
                ItemState::Staged
            };
            item.error = None;
        }
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}
