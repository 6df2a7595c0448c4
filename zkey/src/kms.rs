//! A repository bound to a key management server through a KMS plug-in.
//!
//! `<repo>/kms.conf` names the plug-in and its configuration directory (`<repo>/<PLUGIN>/`)
//! and the APQNs the plug-in's keys use, split by mode (`cca_apqns`, `ep11_apqns`). Keys of a
//! bound repository are generated in the KMS; the repository keeps their secure form and the
//! KMS's IDs (`kms`, `kms-key-id`, or `kms-xts-key{1,2}-id` for XTS keys), so that a key can be
//! re-imported ("refreshed") under the CURRENT master key at any time, which is the way back
//! after master keys moved on without a re-encipher, and `list`/`import` rebuild a lost
//! repository. zkey talks to the plug-in only through `zkey_kms_protocol::PluginClient`: a
//! plug-in crash or hang is an error, and zkey writes nothing before the plug-in's answer is
//! complete and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use zkey_kms_protocol::{
    ClientError, ConfigureResult, KmsKey, MkDirection, PluginClient, PluginInfo, PluginKeyStatus,
    ReencipherMode, ReencipherReport, XtsPart,
};

use ap_sim::adapter::Mode;
use ap_sim::apqn::{self, Apqn};
use ap_sim::durable;
use ap_sim::token::{KeyType, SecureKey, Token};

use crate::adapters::Adapters;
use crate::error::ZkeyError;
use crate::keyops::{self, NewKey};
use crate::properties::{KeyProperties, Timestamp};
use crate::repository::{KeyEntry, Reader, Writer};
use crate::volume::{SectorSize, Volume, VolumeType};
use crate::KeyName;

const CONF: &str = "kms.conf";

/// What a plug-in reported besides its results (that it failed over to another server, that it
/// registered a new wrapping key and revoked the old one, ...): lines for the user. Every
/// function here that talks to the plug-in returns them with its result; the caller prints
/// them, one per line, whatever else it prints.
pub type Notices = Vec<String>;

/// The KMS errors that are more than a plug-in's error message.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// A plug-in error, with what the plug-in reported before it, so that nothing it said
    /// (e.g. which server it tried) is lost.
    #[error("KMS plug-in: {error}{}", notices_suffix(.notices))]
    Plugin {
        error: ClientError,
        notices: Notices,
    },
    #[error("the KMS already holds an active key {what} (KMS ID {id}, label '{label}'): import it with 'zkey kms import -N {}', remove it with 'zkey remove -N {}' after importing it, or choose another name", crate::keyname::quote_selecting(.name), crate::keyname::quote(.name))]
    Duplicate {
        name: String,
        what: String,
        id: String,
        label: String,
    },
    #[error("{cause}; what it had created in the KMS (KMS ID {}) was removed again, so nothing is left behind: fix the cause and generate the key again", .removed.join(", "))]
    RolledBack {
        cause: Box<ZkeyError>,
        removed: Vec<String>,
    },
    #[error("{cause}; not all it had created in the KMS could be removed again: revoke KMS ID {} with the KMS's own tools ('zkey kms list' shows it; 'zkey kms import' fails on it until then){}", .left.join(", "), notices_suffix(.notices))]
    LeftBehind {
        cause: Box<ZkeyError>,
        left: Vec<String>,
        notices: Notices,
    },
}

fn notices_suffix(n: &[String]) -> String {
    if n.is_empty() {
        String::new()
    } else {
        format!(" (the plug-in also reported: {})", n.join("; "))
    }
}

/// A session with the bound plug-in that keeps its notices with its errors.
struct Session(PluginClient);

impl Session {
    fn open(conf: &KmsConf) -> Result<Session, ZkeyError> {
        conf.client().map(Session)
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut PluginClient) -> Result<T, ClientError>,
    ) -> Result<T, ZkeyError> {
        f(&mut self.0).map_err(|error| {
            KmsError::Plugin {
                error,
                notices: self.0.take_notices(),
            }
            .into()
        })
    }

    /// Ends the session; the notices of all of it.
    fn close(mut self) -> Result<Notices, ZkeyError> {
        let n = self.0.take_notices();
        self.0.close().map_err(|error| KmsError::Plugin {
            error,
            notices: n.clone(),
        })?;
        Ok(n)
    }
}

/// The binding of a repository.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KmsConf {
    pub kms: String,
    pub config: PathBuf,
    pub cca_apqns: Vec<Apqn>,
    pub ep11_apqns: Vec<Apqn>,
    /// A random ID of this binding (`id=` in kms.conf), kept with every key generated in the
    /// KMS as `zkey-repository`: a KMS is shared by many hosts and repositories, each with its
    /// own `disk1`, so a name is a duplicate only among the keys of one repository. Made on the
    /// first generate of a repository bound before it existed.
    pub id: Option<String>,
}

/// The KMS property with the binding's [`KmsConf::id`].
pub const REPOSITORY_PROPERTY: &str = "zkey-repository";

fn plugin_err(e: zkey_kms_protocol::ClientError) -> ZkeyError {
    ZkeyError::Invalid(format!("KMS plug-in: {e}"))
}

impl KmsConf {
    /// The repository's binding, if it is bound.
    pub fn load(r: &Reader<'_>) -> Result<Option<KmsConf>, ZkeyError> {
        let p = r.repository().path().join(CONF);
        let text = match infra::input::read_own_text(&p, "KMS binding file") {
            Ok(t) => t,
            Err(infra::input::InputError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let mut c = KmsConf::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line.split_once('=').ok_or_else(|| {
                ZkeyError::Invalid(format!(
                    "{}: '{line}' is not name=value; restore the file or unbind and bind again",
                    p.display()
                ))
            })?;
            let list = |v: &str| {
                if v.trim().is_empty() {
                    Ok(Vec::new())
                } else {
                    apqn::parse_list(v)
                        .map_err(|e| ZkeyError::Invalid(format!("{}: {e}", p.display())))
                }
            };
            match k.trim() {
                "kms" => c.kms = v.trim().to_string(),
                "config" => c.config = PathBuf::from(v.trim()),
                "cca_apqns" => c.cca_apqns = list(v)?,
                "ep11_apqns" => c.ep11_apqns = list(v)?,
                "id" if !v.trim().is_empty() => c.id = Some(v.trim().to_string()),
                _ => {}
            }
        }
        if c.kms.is_empty() {
            return Err(ZkeyError::Invalid(format!(
                "{} names no plug-in (kms=)",
                p.display()
            )));
        }
        Ok(Some(c))
    }

    fn save(&self, w: &Writer<'_>) -> Result<(), ZkeyError> {
        w.changing()?;
        let p = w.repository().path().join(CONF);
        let all: Vec<Apqn> = self
            .cca_apqns
            .iter()
            .chain(&self.ep11_apqns)
            .copied()
            .collect();
        let mut text = format!(
            "kms={}\nconfig={}\napqns={}\ncca_apqns={}\nep11_apqns={}\n",
            self.kms,
            self.config.display(),
            apqn::format_list(&all),
            apqn::format_list(&self.cca_apqns),
            apqn::format_list(&self.ep11_apqns)
        );
        if let Some(id) = &self.id {
            text.push_str(&format!("id={id}\n"));
        }
        durable::write_atomic(&p, text.as_bytes(), w.repository().file_mode()).map_err(|source| {
            ZkeyError::Io {
                action: "writing",
                path: p,
                source,
            }
        })
    }

    /// A session with the bound plug-in.
    pub fn client(&self) -> Result<PluginClient, ZkeyError> {
        PluginClient::open(&self.kms, Some(&self.config)).map_err(plugin_err)
    }

    fn apqns_for(&self, t: KeyType) -> &[Apqn] {
        if t.mode() == Mode::Ep11 {
            &self.ep11_apqns
        } else {
            &self.cca_apqns
        }
    }
}

/// The bound repository's configuration, or an error saying how to bind one.
pub fn require(r: &Reader<'_>) -> Result<KmsConf, ZkeyError> {
    KmsConf::load(r)?.ok_or_else(|| ZkeyError::Invalid("the repository is not bound to a KMS: bind it with 'zkey kms bind PLUGIN' (see 'zkey kms plugins')".into()))
}

/// Binds the repository to the plug-in `name` (from kms-plugins.conf).
pub fn bind(w: &Writer<'_>, name: &str) -> Result<(KmsConf, Notices), ZkeyError> {
    if let Some(c) = KmsConf::load(w)? {
        return Err(ZkeyError::Invalid(format!("the repository is already bound to the KMS plug-in '{}': unbind it first ('zkey kms unbind')", c.kms)));
    }
    if name.contains(['/', '.']) || name.is_empty() {
        return Err(ZkeyError::Invalid(format!(
            "'{name}' is not a plug-in name: 'zkey kms plugins' lists them"
        )));
    }
    let dir = w.repository().path().join(name);
    w.changing()?;
    ap_sim::durable::refuse_link_at(&dir)
        .and_then(|()| std::fs::create_dir_all(&dir))
        .map_err(|source| ZkeyError::io("creating", dir.clone(), source))?;
    let mut s = Session(PluginClient::open(name, None).map_err(plugin_err)?);
    s.call(|c| c.bind(&dir))?;
    let notices = s.close()?;
    let conf = KmsConf {
        kms: name.to_string(),
        config: dir,
        id: Some(new_binding_id()),
        ..KmsConf::default()
    };
    conf.save(w)?;
    Ok((conf, notices))
}

/// The binding and what the plug-in reports about itself (`zkey kms info`).
pub fn info(r: &Reader<'_>) -> Result<(KmsConf, PluginInfo, Notices), ZkeyError> {
    let conf = require(r)?;
    let mut s = Session::open(&conf)?;
    let info = s.call(|c| c.info())?;
    let notices = s.close()?;
    Ok((conf, info, notices))
}

/// The plug-in's own keys (identity key, wrapping key): their master key types, APQNs and the
/// MKVPs of the live and the staged tokens, without re-enciphering or using anything.
/// Nothing (and no notices) when the repository is not bound.
pub fn key_status(r: &Reader<'_>) -> Result<(Vec<PluginKeyStatus>, Notices), ZkeyError> {
    let Some(conf) = KmsConf::load(r)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut s = Session::open(&conf)?;
    let rep = s.call(|c| c.key_status())?;
    let notices = s.close()?;
    Ok((rep.keys, notices))
}

/// Configures the plug-in: APQNs (cross-checked, split by mode) and plug-in options.
pub fn configure(
    w: &Writer<'_>,
    ad: &Adapters,
    apqns: Option<Vec<Apqn>>,
    options: BTreeMap<String, String>,
) -> Result<(ConfigureResult, Vec<String>), ZkeyError> {
    let mut conf = require(w)?;
    let (mut cca, mut ep11) = (None, None);
    if let Some(list) = apqns {
        let (mut c, mut e) = (Vec::new(), Vec::new());
        for a in list {
            match ad.sysfs.queue(a)?.and_then(|q| q.mode) {
                Some(Mode::Cca) => c.push(a),
                Some(Mode::Ep11) => e.push(a),
                _ => {
                    return Err(ZkeyError::Invalid(format!(
                    "APQN {a} is neither a CCA nor an EP11 coprocessor: 'lszcrypt' lists the APQNs"
                )))
                }
            }
        }
        if !c.is_empty() {
            keyops::check_binding(ad, KeyType::CcaAesData, &c, None)?;
        }
        if !e.is_empty() {
            keyops::check_binding(ad, KeyType::Ep11Aes, &e, None)?;
        }
        cca = Some(c);
        ep11 = Some(e);
    }
    let mut s = Session::open(&conf)?;
    w.changing()?;
    let result = s.call(|c| {
        c.configure(
            cca.as_ref()
                .map(|v| v.iter().map(Apqn::to_string).collect()),
            ep11.as_ref()
                .map(|v| v.iter().map(Apqn::to_string).collect()),
            options,
        )
    })?;
    let notices = s.close()?;
    if let Some(c) = cca {
        conf.cca_apqns = c;
    }
    if let Some(e) = ep11 {
        conf.ep11_apqns = e;
    }
    conf.save(w)?;
    // Bound keys use the plug-in's APQNs.
    for e in w
        .entries()?
        .into_iter()
        .flatten()
        .filter(|e| e.properties.is_kms_bound())
    {
        if let Ok(t) = e.properties.key_type.parse::<KeyType>() {
            let mut p = e.properties.clone();
            p.apqns = conf.apqns_for(t).to_vec();
            if p.apqns != e.properties.apqns {
                w.write_info(&e.name, &p)?;
            }
        }
    }
    Ok((result, notices))
}

/// Unbinds: the plug-in is deconfigured first (nothing changes if that fails), then the keys
/// become local keys, then the plug-in directory and kms.conf go.
pub fn unbind(w: &Writer<'_>) -> Result<(usize, Notices), ZkeyError> {
    let conf = require(w)?;
    let mut s = Session::open(&conf)?;
    w.changing()?;
    s.call(|c| c.deconfigure())?;
    let notices = s.close()?;
    let mut n = 0;
    for e in w
        .entries()?
        .into_iter()
        .flatten()
        .filter(|e| e.properties.is_kms_bound())
    {
        let mut p = e.properties.clone();
        p.kms = None;
        p.kms_key_id = None;
        p.kms_key_label = None;
        p.kms_xts_key1_id = None;
        p.kms_xts_key1_label = None;
        p.kms_xts_key2_id = None;
        p.kms_xts_key2_label = None;
        w.write_info(&e.name, &p)?;
        n += 1;
    }
    let cp = w.repository().path().join(CONF);
    durable::remove_durable(&cp).map_err(|source| ZkeyError::Io {
        action: "removing",
        path: cp,
        source,
    })?;
    if conf.config.starts_with(w.repository().path()) && conf.config.is_dir() {
        std::fs::remove_dir_all(&conf.config).map_err(|source| ZkeyError::Io {
            action: "removing",
            path: conf.config.clone(),
            source,
        })?;
    }
    Ok((n, notices))
}

fn new_binding_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The properties zkey keeps with a key in the KMS, so a lost repository can be rebuilt.
fn kms_properties(name: &str, binding: &str, p: &KeyProperties) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("zkey-name".into(), name.to_string());
    m.insert(REPOSITORY_PROPERTY.into(), binding.to_string());
    m.insert("cipher".into(), "paes".into());
    m.insert("iv-mode".into(), "plain64".into());
    m.insert(
        "volumes".into(),
        crate::volume::format_volume_list(&p.volumes),
    );
    m.insert("volume-type".into(), p.volume_type.as_property().into());
    m.insert("sector-size".into(), p.sector_size.to_string());
    if let Some(d) = &p.description {
        m.insert("description".into(), d.clone());
    }
    if let Some(vp) = p.verification_pattern {
        m.insert("verification-pattern".into(), vp.to_string());
    }
    m
}

/// Generates a repository key in the KMS. The key type is the requested one if the plug-in
/// supports it, else the first it supports of AESDATA, AESCIPHER, EP11.
///
/// Drops the plug-in's notices: [`generate_with_notices`] returns them.
pub fn generate(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    spec: &NewKey,
) -> Result<(SecureKey, KeyProperties), ZkeyError> {
    generate_with_notices(w, ad, name, spec).map(|(k, p, _)| (k, p))
}

/// [`generate`], with the plug-in's notices for the user.
///
/// A name (or KMS label) that an active key in the KMS has already is refused before anything
/// is made: two KMS keys with one zkey name would make `zkey kms import` ambiguous. When the
/// generation fails after the KMS created a key (the second XTS half, the link between the
/// halves, the VP), what was created is removed (revoked and destroyed) again, so that no
/// half-made key stays active in the KMS; the error says so, or names the keys it could not
/// remove.
pub fn generate_with_notices(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    spec: &NewKey,
) -> Result<(SecureKey, KeyProperties, Notices), ZkeyError> {
    let mut conf = require(w)?;
    // A name the repository has already would fail only after the KMS made the key: refuse
    // it before, with the repository's own words.
    if crate::repository::KeyFile::ALL
        .iter()
        .any(|f| w.repository().key_file(name, *f).exists())
    {
        return Err(crate::repository::RepoError::KeyExists { name: name.clone() }.into());
    }
    keyops::check_volumes_free(w, name, &spec.volumes)?;
    // The KMS (and maybe kms.conf) is changed from here on.
    w.changing()?;
    let binding = match conf.id.clone() {
        Some(id) => id,
        None => {
            let id = new_binding_id();
            conf.id = Some(id.clone());
            conf.save(w)?;
            id
        }
    };
    let mut s = Session::open(&conf)?;
    refuse_duplicate(&mut s, name, spec.xts, &binding)?;
    let mut created = Vec::new();
    match generate_in_kms(&mut s, ad, &conf, name, spec, &mut created) {
        Ok((key, props)) => {
            let notices = s.close()?;
            Ok((key, props, notices))
        }
        Err(cause) if created.is_empty() => Err(cause),
        Err(cause) => {
            let mut left = Vec::new();
            for id in &created {
                let destroy = BTreeMap::from([("destroy".to_string(), "yes".to_string())]);
                if s.call(|c| c.remove_key(id, destroy)).is_err() {
                    left.push(id.clone());
                }
            }
            let notices = s.0.take_notices();
            let _ = s.0.close();
            Err(if left.is_empty() {
                KmsError::RolledBack {
                    cause: Box::new(cause),
                    removed: created,
                }
            } else {
                KmsError::LeftBehind {
                    cause: Box::new(cause),
                    left,
                    notices,
                }
            }
            .into())
        }
    }
}

/// Whether a key in the KMS is still in use (not revoked, destroyed or compromised).
fn is_live(k: &KmsKey) -> bool {
    matches!(
        k.state.to_ascii_lowercase().as_str(),
        "active" | "pre-active" | "preactive"
    )
}

/// Refuses `name` when an active key of this repository in the KMS has it as zkey name or
/// label. Keys of other repositories sharing the KMS do not count; keys from before bindings
/// had IDs do, since they cannot be told apart.
fn refuse_duplicate(
    s: &mut Session,
    name: &KeyName,
    xts: bool,
    binding: &str,
) -> Result<(), ZkeyError> {
    let labels: Vec<String> = if xts {
        vec![format!("{name}.xts1"), format!("{name}.xts2")]
    } else {
        vec![name.to_string()]
    };
    let keys = s.call(|c| c.list_keys(None, BTreeMap::new(), BTreeMap::new()))?;
    let ours = |k: &KmsKey| {
        k.properties
            .get(REPOSITORY_PROPERTY)
            .is_none_or(|b| b == binding)
    };
    for k in keys.iter().filter(|k| is_live(k) && ours(k)) {
        let what = if k.properties.get("zkey-name").map(String::as_str) == Some(name.as_str()) {
            format!("named '{name}'")
        } else if labels.contains(&k.label) {
            format!("labelled '{}'", k.label)
        } else {
            continue;
        };
        return Err(KmsError::Duplicate {
            name: name.to_string(),
            what,
            id: k.key_id.clone(),
            label: k.label.clone(),
        }
        .into());
    }
    Ok(())
}

/// The KMS part of [`generate_with_notices`]; `created` collects the KMS IDs of the keys made,
/// for the rollback.
fn generate_in_kms(
    s: &mut Session,
    ad: &Adapters,
    conf: &KmsConf,
    name: &KeyName,
    spec: &NewKey,
    created: &mut Vec<String>,
) -> Result<(SecureKey, KeyProperties), ZkeyError> {
    let mut kt = None;
    for t in std::iter::once(spec.key_type).chain(KeyType::ALL) {
        if s.call(|c| c.supports_key_type(t.name()))? {
            kt = Some(t);
            break;
        }
    }
    let kt = kt.ok_or_else(|| {
        ZkeyError::Invalid(format!(
            "the KMS plug-in '{}' supports none of the AES key types",
            conf.kms
        ))
    })?;
    let mut spec = spec.clone();
    spec.key_type = kt;
    spec.apqns = conf.apqns_for(kt).to_vec();
    if spec.apqns.is_empty() {
        return Err(ZkeyError::Invalid(format!(
            "the KMS plug-in has no {} APQNs: configure them with 'zkey kms configure --apqns ...'",
            if kt.mode() == Mode::Ep11 {
                "EP11"
            } else {
                "CCA"
            }
        )));
    }
    let props = KeyProperties {
        volumes: spec.volumes.clone(),
        volume_type: spec.volume_type,
        sector_size: spec.sector_size,
        description: spec.description.clone(),
        ..KeyProperties::default()
    };
    let binding = conf.id.as_deref().unwrap_or_default();
    let mut kprops = kms_properties(name.as_str(), binding, &props);
    let (key, ids) = if spec.xts {
        kprops.insert("xts-key".into(), "XTS-KEY-1".into());
        let label1 = format!("{name}.xts1");
        let (k1, id1, l1) = s.call(|c| {
            c.generate_key(
                kt.name(),
                spec.bits,
                XtsPart::Xts1,
                Some(&label1),
                kprops.clone(),
            )
        })?;
        created.push(id1.clone());
        kprops.insert("xts-key".into(), "XTS-KEY-2".into());
        kprops.insert("xts-key1-id".into(), id1.clone());
        let label2 = format!("{name}.xts2");
        let (k2, id2, l2) =
            s.call(|c| c.generate_key(kt.name(), spec.bits, XtsPart::Xts2, Some(&label2), kprops))?;
        created.push(id2.clone());
        s.call(|c| {
            c.set_key_properties(
                &id1,
                BTreeMap::from([("xts-key2-id".to_string(), Some(id2.clone()))]),
            )
        })?;
        (
            SecureKey::xts(Token::parse(&k1)?, Token::parse(&k2)?)?,
            vec![(id1, l1), (id2, l2)],
        )
    } else {
        let (k, id, l) = s.call(|c| {
            c.generate_key(
                kt.name(),
                spec.bits,
                XtsPart::None,
                Some(name.as_str()),
                kprops,
            )
        })?;
        created.push(id.clone());
        (SecureKey::single(Token::parse(&k)?), vec![(id, l)])
    };
    let base = keyops::properties_for(ad, &key, &spec)?;
    let mut props = KeyProperties {
        kms: Some(conf.kms.clone()),
        ..base
    };
    set_ids(&mut props, &ids);
    // The VP is known only now: record it in the KMS for refresh and disaster recovery.
    if let Some(vp) = props.verification_pattern {
        for (id, _) in &ids {
            s.call(|c| {
                c.set_key_properties(
                    id,
                    BTreeMap::from([("verification-pattern".to_string(), Some(vp.to_string()))]),
                )
            })?;
        }
    }
    Ok((key, props))
}

fn set_ids(p: &mut KeyProperties, ids: &[(String, String)]) {
    match ids {
        [(id, label)] => {
            p.kms_key_id = Some(id.clone());
            p.kms_key_label = Some(label.clone());
        }
        [(i1, l1), (i2, l2)] => {
            p.kms_xts_key1_id = Some(i1.clone());
            p.kms_xts_key1_label = Some(l1.clone());
            p.kms_xts_key2_id = Some(i2.clone());
            p.kms_xts_key2_label = Some(l2.clone());
        }
        _ => {}
    }
}

/// The KMS IDs of a bound key, in XTS order.
pub fn key_ids(p: &KeyProperties) -> Vec<String> {
    match (&p.kms_key_id, &p.kms_xts_key1_id, &p.kms_xts_key2_id) {
        (Some(id), _, _) => vec![id.clone()],
        (None, Some(a), Some(b)) => vec![a.clone(), b.clone()],
        _ => Vec::new(),
    }
}

/// Deactivates a bound key in the KMS (before zkey removes it locally).
///
/// Drops the plug-in's notices: [`remove_with_notices`] returns them.
pub fn remove(r: &Reader<'_>, p: &KeyProperties) -> Result<(), ZkeyError> {
    remove_with_notices(r, p).map(drop)
}

/// [`remove`], with the plug-in's notices for the user.
pub fn remove_with_notices(r: &Reader<'_>, p: &KeyProperties) -> Result<Notices, ZkeyError> {
    let conf = require(r)?;
    let mut s = Session::open(&conf)?;
    for id in key_ids(p) {
        s.call(|c| c.remove_key(&id, BTreeMap::new()))?;
    }
    s.close()
}

fn import_secure_key(s: &mut Session, ids: &[String], kt: KeyType) -> Result<SecureKey, ZkeyError> {
    let tokens = ids
        .iter()
        .map(|id| {
            s.call(|c| c.import_key(id, kt.name()))
                .and_then(|b| Ok(Token::parse(&b)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut it = tokens.into_iter();
    let first = it
        .next()
        .ok_or_else(|| ZkeyError::Invalid("no KMS key ID".into()))?;
    Ok(match it.next() {
        Some(second) => SecureKey::xts(first, second)?,
        None => SecureKey::single(first),
    })
}

/// What a refresh or import did with one key (serialised as the lowercase word).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Done {
    Imported,
    Refreshed,
    Skipped,
    Failed,
}

impl Done {
    pub fn word(self) -> &'static str {
        match self {
            Done::Imported => "imported",
            Done::Refreshed => "refreshed",
            Done::Skipped => "skipped",
            Done::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// What a refresh or import did with one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyOutcome {
    pub name: String,
    pub result: Done,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// More about the result (why a key was skipped, a staged copy that was kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Re-imports bound keys under the CURRENT master key, each checked against its stored VP.
///
/// A pending staged re-encipher (`<name>.renc`) is kept: it is the same effective key (the
/// refreshed key's VP was just checked against the one stored in the KMS, and `zkey
/// reencipher --complete` checks the staged key's VP before it installs it), so dropping it
/// would silently undo the staging of a rotation in progress and leave the key under what
/// becomes the OLD master key at the SET. The outcome's note says that it was kept.
pub fn refresh(
    w: &Writer<'_>,
    ad: &Adapters,
    names: Option<&crate::Pattern>,
    reload_properties: bool,
) -> Result<(Vec<KeyOutcome>, Notices), ZkeyError> {
    let conf = require(w)?;
    let mut s = Session::open(&conf)?;
    let names = crate::reencipher::resolve_names(names, w)?;
    let mut out = Vec::new();
    for e in w.entries()?.into_iter().flatten() {
        if !e.properties.is_kms_bound() || names.as_ref().is_some_and(|p| !p.matches_name(&e.name))
        {
            continue;
        }
        let res = refresh_one(w, ad, &mut s, &e, reload_properties);
        let note = (res.is_ok() && e.staged.is_some()).then(|| {
            format!(
                "its staged re-encipher {name}.renc is kept: complete it after the SET with 'zkey reencipher -N {q} --complete'",
                name = e.name,
                q = crate::keyname::quote_selecting(e.name.as_str())
            )
        });
        out.push(KeyOutcome {
            name: e.name.to_string(),
            result: if res.is_ok() {
                Done::Refreshed
            } else {
                Done::Failed
            },
            error: res.err().map(|e| e.to_string()),
            note,
        });
    }
    let notices = s.close()?;
    Ok((out, notices))
}

fn refresh_one(
    w: &Writer<'_>,
    ad: &Adapters,
    client: &mut Session,
    e: &KeyEntry,
    reload: bool,
) -> Result<(), ZkeyError> {
    let kt: KeyType = e
        .properties
        .key_type
        .parse()
        .map_err(|e: ap_sim::token::TokenError| ZkeyError::Invalid(e.to_string()))?;
    let ids = key_ids(&e.properties);
    let key = import_secure_key(client, &ids, kt)?;
    let within = (!e.properties.apqns.is_empty()).then_some(e.properties.apqns.as_slice());
    let vp = ad.hsm.verification_pattern(&key, within)?;
    if let Some(stored) = e.properties.verification_pattern {
        if stored != vp {
            return Err(ZkeyError::VpMismatch {
                name: e.name.to_string(),
                staged: vp,
                expected: stored,
            });
        }
    }
    let mut p = e.properties.clone();
    if reload {
        let kp = client.call(|c| c.get_key_properties(&ids[0]))?;
        apply_kms_properties(&mut p, &kp)?;
    }
    p.reencipher_time = Some(Timestamp::now());
    w.write_skey(&e.name, &key.to_bytes())?;
    w.write_info(&e.name, &p)?;
    // A staged copy stays (see `refresh`): it is the same effective key, re-enciphered for
    // the coming SET, and `--complete` verifies it before installing it.
    Ok(())
}

fn apply_kms_properties(
    p: &mut KeyProperties,
    kp: &BTreeMap<String, String>,
) -> Result<(), ZkeyError> {
    let bad =
        |what: &str, e: String| ZkeyError::Invalid(format!("the KMS holds an invalid {what}: {e}"));
    if let Some(v) = kp.get("volumes") {
        p.volumes = if v.is_empty() {
            Vec::new()
        } else {
            crate::volume::parse_volume_list(v).map_err(|e| bad("volume list", e.to_string()))?
        };
    }
    if let Some(v) = kp.get("volume-type") {
        p.volume_type = v
            .parse()
            .map_err(|e: crate::volume::VolumeTypeError| bad("volume type", e.to_string()))?;
    }
    if let Some(v) = kp.get("sector-size") {
        p.sector_size = v
            .parse()
            .map_err(|e: crate::volume::SectorSizeError| bad("sector size", e.to_string()))?;
    }
    if let Some(v) = kp.get("description") {
        p.description = Some(v.clone());
    }
    Ok(())
}

/// The keys in the KMS (first XTS halves and single keys), with their zkey properties.
pub fn list(r: &Reader<'_>, label: Option<&str>) -> Result<(Vec<KmsKey>, Notices), ZkeyError> {
    let conf = require(r)?;
    let mut s = Session::open(&conf)?;
    let keys = s.call(|c| c.list_keys(label, BTreeMap::new(), BTreeMap::new()))?;
    let notices = s.close()?;
    Ok((
        keys.into_iter()
            .filter(|k| k.properties.get("xts-key").map(String::as_str) != Some("XTS-KEY-2"))
            .collect(),
        notices,
    ))
}

/// Rebuilds repository keys from the KMS (a new host, a lost repository): each active key with
/// a zkey name becomes a repository key, names and volume associations included. Keys whose
/// name exists already, and keys that were removed (revoked, destroyed) in the KMS, are
/// skipped, with a note why. A broken entry (an XTS half without its link, an invalid
/// property, a VP mismatch) fails on its own: the others are still imported.
pub fn import(
    w: &Writer<'_>,
    ad: &Adapters,
    label: Option<&str>,
    names: Option<&crate::Pattern>,
    volume_check: impl Fn(&Volume) -> bool,
) -> Result<(Vec<KeyOutcome>, Notices), ZkeyError> {
    let conf = require(w)?;
    let mut client = Session::open(&conf)?;
    let keys = client.call(|c| c.list_keys(label, BTreeMap::new(), BTreeMap::new()))?;
    // A -N that spells a key's name in the KMS exactly selects that key alone.
    let names = names.map(|p| p.resolve(keys.iter().filter_map(|k| k.properties.get("zkey-name"))));
    let mut out = Vec::new();
    for k in keys
        .iter()
        .filter(|k| k.properties.get("xts-key").map(String::as_str) != Some("XTS-KEY-2"))
    {
        let Some(name) = k.properties.get("zkey-name") else {
            continue;
        };
        if names.as_ref().is_some_and(|p| !p.matches(name)) {
            continue;
        }
        let res = import_one(w, ad, &conf, &mut client, k, name, &volume_check);
        let (result, note, error) = match res {
            Ok(Imported::Yes) => (Done::Imported, None, None),
            Ok(Imported::Skipped(why)) => (Done::Skipped, Some(why), None),
            Err(e) => (
                Done::Failed,
                None,
                Some(format!("KMS key {} ({}): {e}", k.key_id, k.label)),
            ),
        };
        out.push(KeyOutcome {
            name: name.clone(),
            result,
            error,
            note,
        });
    }
    let notices = client.close()?;
    Ok((out, notices))
}

enum Imported {
    Yes,
    Skipped(String),
}

fn import_one(
    w: &Writer<'_>,
    ad: &Adapters,
    conf: &KmsConf,
    client: &mut Session,
    k: &KmsKey,
    name: &str,
    volume_check: &dyn Fn(&Volume) -> bool,
) -> Result<Imported, ZkeyError> {
    if !k.state.eq_ignore_ascii_case("active") {
        // Removed with zkey (revoked) or in the KMS: not a key to bring back.
        return Ok(Imported::Skipped(format!(
            "KMS key {} is {} in the KMS",
            k.key_id, k.state
        )));
    }
    let name = KeyName::new(name).map_err(|e| ZkeyError::Invalid(e.to_string()))?;
    if w.list_names()?.contains(&name) {
        return Ok(Imported::Skipped(format!(
            "the repository has a key '{name}' already"
        )));
    }
    let xts = k.properties.get("xts-key").map(String::as_str) == Some("XTS-KEY-1");
    let ids: Vec<String> = if xts {
        let second = k.properties.get("xts-key2-id").ok_or_else(|| {
            ZkeyError::Invalid("the first XTS key has no link to the second (xts-key2-id): it is a half-made key of a failed 'zkey generate'; remove it in the KMS (revoke it)".into())
        })?;
        vec![k.key_id.clone(), second.clone()]
    } else {
        vec![k.key_id.clone()]
    };
    let mut kt = None;
    for t in KeyType::ALL {
        if conf.apqns_for(t).is_empty() || !client.call(|c| c.supports_key_type(t.name()))? {
            continue;
        }
        kt = Some(t);
        break;
    }
    let kt = kt.ok_or_else(|| {
        ZkeyError::Invalid("no key type the plug-in supports has APQNs configured".into())
    })?;
    let key = import_secure_key(client, &ids, kt)?;
    let mut p = KeyProperties::default();
    apply_kms_properties(&mut p, &k.properties)?;
    if let Some(v) = p.volumes.iter().find(|v| !volume_check(v)) {
        return Err(ZkeyError::Invalid(format!(
            "volume {v} is not available here (use --no-volume-check to import anyway)"
        )));
    }
    let spec = NewKey {
        key_type: kt,
        bits: key.key_bits(),
        xts,
        description: p.description.clone(),
        apqns: conf.apqns_for(kt).to_vec(),
        volumes: p.volumes.clone(),
        volume_type: if k.properties.contains_key("volume-type") {
            p.volume_type
        } else {
            VolumeType::DEFAULT_FOR_NEW_KEYS
        },
        sector_size: if k.properties.contains_key("sector-size") {
            p.sector_size
        } else {
            SectorSize::DEFAULT
        },
        apqn_check: false,
    };
    let props = keyops::properties_for(ad, &key, &spec)?;
    if let Some(stored) = k.properties.get("verification-pattern") {
        let stored: ap_sim::VerificationPattern = stored.parse().map_err(|e| {
            ZkeyError::Invalid(format!(
                "the KMS holds an invalid verification pattern: {e}"
            ))
        })?;
        if let Some(vp) = props.verification_pattern.filter(|vp| *vp != stored) {
            return Err(ZkeyError::VpMismatch {
                name: name.to_string(),
                staged: vp,
                expected: stored,
            });
        }
    }
    let mut props = KeyProperties {
        kms: Some(conf.kms.clone()),
        ..props
    };
    let labels: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                if id == &k.key_id {
                    k.label.clone()
                } else {
                    String::new()
                },
            )
        })
        .collect();
    set_ids(&mut props, &labels);
    keyops::check_volumes_free(w, &name, &props.volumes)?;
    w.create_key(&name, &key.to_bytes(), &props, None)?;
    Ok(Imported::Yes)
}

/// Re-enciphers the plug-in's own keys (identity key, wrapping key); `only` limits it to the
/// key under one master key type (`apka`: the identity key, `aes`: the wrapping key).
///
/// Before anything is staged towards NEW, every master key type of the plug-in's keys that
/// has a NEW key loaded on their APQNs must have the same complete NEW key on all of them
/// (the cross-check every staging command makes): otherwise [`ZkeyError::NotReady`] and
/// nothing changed. A type with nothing in NEW on any of them is not affected by the change;
/// the plug-in reports its key `skipped`. The report says per key what happened; a key
/// reported `failed` is the caller's error to raise (see [`ReencipherReport`]).
pub fn reencipher(
    r: &Reader<'_>,
    ad: &Adapters,
    mode: ReencipherMode,
    direction: MkDirection,
    only: Option<ap_sim::MkType>,
) -> Result<(ReencipherReport, Notices), ZkeyError> {
    let conf = require(r)?;
    let mut s = Session::open(&conf)?;
    if mode != ReencipherMode::Complete && direction != MkDirection::FromOld {
        // Which types and APQNs the plug-in's keys use; a plug-in without `key_status` (an
        // older one) keeps its keys, as the KMIP plug-in does, under APKA and AES on its CCA
        // APQNs.
        let types: Vec<(ap_sim::MkType, Vec<Apqn>)> = match s.0.key_status() {
            Ok(rep) => rep
                .keys
                .into_iter()
                .map(|k| {
                    let apqns = if k.apqns.is_empty() {
                        conf.cca_apqns.clone()
                    } else {
                        k.apqns
                    };
                    (k.mktype, apqns)
                })
                .collect(),
            Err(e) if e.code() == Some(zkey_kms_protocol::ErrorCode::InvalidRequest) => {
                [ap_sim::MkType::Apka, ap_sim::MkType::Aes]
                    .into_iter()
                    .map(|t| (t, conf.cca_apqns.clone()))
                    .collect()
            }
            Err(error) => {
                return Err(KmsError::Plugin {
                    error,
                    notices: s.0.take_notices(),
                }
                .into())
            }
        };
        for (t, apqns) in types.iter().filter(|(t, _)| only.is_none_or(|o| o == *t)) {
            require_new_if_loaded(ad, *t, apqns)?;
        }
    }
    let options = only
        .map(|t| BTreeMap::from([("mktype".to_string(), t.to_string())]))
        .unwrap_or_default();
    let rep = s.call(|c| c.reencipher(mode, direction, options))?;
    let notices = s.close()?;
    Ok((rep, notices))
}

/// The staging cross-check for `mktype` on `apqns`, unless no NEW register of that type on
/// them holds anything (then the type is not part of the change). A partial or unreadable NEW
/// register counts as loaded, so that the check says what is wrong with it.
fn require_new_if_loaded(
    ad: &Adapters,
    mktype: ap_sim::MkType,
    apqns: &[Apqn],
) -> Result<(), ZkeyError> {
    if apqns.is_empty() {
        return Ok(());
    }
    match ap_sim::crosscheck::require_new(&ad.sysfs, mktype, apqns)? {
        Err(not_ready) if !not_ready.0.nothing_new(apqns.len()) => Err(not_ready.into()),
        _ => Ok(()),
    }
}

/// The plug-ins named in kms-plugins.conf.
pub fn plugins() -> Result<(PathBuf, Vec<(String, PathBuf)>), ZkeyError> {
    let path = zkey_kms_protocol::plugins_conf_path();
    let text = if path.exists() {
        infra::input::read_text_bounded(&path, "KMS plug-in list")?
    } else {
        String::new()
    };
    Ok((path.clone(), zkey_kms_protocol::parse_plugins_conf(&text)))
}
