//! A repository bound to a key management server through a KMS plug-in.
//!
//! `<repo>/kms.conf` names the plug-in and its configuration directory (`<repo>/<PLUGIN>/`)
//! and the APQNs the plug-in's keys use, split by mode (`cca_apqns`, `ep11_apqns`). Keys of a
//! bound repository are generated in the KMS; the repository keeps their secure form and the
//! KMS's IDs (`kms`, `kms-key-id`, or `kms-xts-key{1,2}-id` for XTS keys), so that a key can be
//! re-imported ("refreshed") under the CURRENT master key at any time, which is the way back
//! after master keys moved on without a re-encipher, and `list`/`import` rebuild a lost
//! repository. zkey talks to the plug-in only through `kms_plugin::plugin::PluginClient`: a
//! plug-in crash or hang is an error, and zkey writes nothing before the plug-in's answer is
//! complete and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kms_plugin::plugin::{
    ConfigureResult, KmsKey, MkDirection, PluginClient, ReencipherMode, ReencipherReport, XtsPart,
};
use serde::Serialize;

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

/// The binding of a repository.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KmsConf {
    pub kms: String,
    pub config: PathBuf,
    pub cca_apqns: Vec<Apqn>,
    pub ep11_apqns: Vec<Apqn>,
}

fn plugin_err(e: kms_plugin::plugin::ClientError) -> ZkeyError {
    ZkeyError::Invalid(format!("KMS plug-in: {e}"))
}

impl KmsConf {
    /// The repository's binding, if it is bound.
    pub fn load(r: &Reader<'_>) -> Result<Option<KmsConf>, ZkeyError> {
        let p = r.repository().path().join(CONF);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ZkeyError::Io {
                    action: "reading",
                    path: p,
                    source,
                })
            }
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
        let p = w.repository().path().join(CONF);
        let all: Vec<Apqn> = self
            .cca_apqns
            .iter()
            .chain(&self.ep11_apqns)
            .copied()
            .collect();
        let text = format!(
            "kms={}\nconfig={}\napqns={}\ncca_apqns={}\nep11_apqns={}\n",
            self.kms,
            self.config.display(),
            apqn::format_list(&all),
            apqn::format_list(&self.cca_apqns),
            apqn::format_list(&self.ep11_apqns)
        );
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
pub fn bind(w: &Writer<'_>, name: &str) -> Result<KmsConf, ZkeyError> {
    if let Some(c) = KmsConf::load(w)? {
        return Err(ZkeyError::Invalid(format!("the repository is already bound to the KMS plug-in '{}': unbind it first ('zkey kms unbind')", c.kms)));
    }
    if name.contains(['/', '.']) || name.is_empty() {
        return Err(ZkeyError::Invalid(format!(
            "'{name}' is not a plug-in name: 'zkey kms plugins' lists them"
        )));
    }
    let dir = w.repository().path().join(name);
    std::fs::create_dir_all(&dir).map_err(|source| ZkeyError::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    let mut client = PluginClient::open(name, None).map_err(plugin_err)?;
    client.bind(&dir).map_err(plugin_err)?;
    client.close().map_err(plugin_err)?;
    let conf = KmsConf {
        kms: name.to_string(),
        config: dir,
        ..KmsConf::default()
    };
    conf.save(w)?;
    Ok(conf)
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
    let mut client = conf.client()?;
    let result = client
        .configure(
            cca.as_ref()
                .map(|v| v.iter().map(Apqn::to_string).collect()),
            ep11.as_ref()
                .map(|v| v.iter().map(Apqn::to_string).collect()),
            options,
        )
        .map_err(plugin_err)?;
    let notices = client.take_notices();
    client.close().map_err(plugin_err)?;
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
pub fn unbind(w: &Writer<'_>) -> Result<usize, ZkeyError> {
    let conf = require(w)?;
    let mut client = conf.client()?;
    client.deconfigure().map_err(plugin_err)?;
    client.close().map_err(plugin_err)?;
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
    Ok(n)
}

/// The properties zkey keeps with a key in the KMS, so a lost repository can be rebuilt.
fn kms_properties(name: &str, p: &KeyProperties) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("zkey-name".into(), name.to_string());
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
pub fn generate(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    spec: &NewKey,
) -> Result<(SecureKey, KeyProperties), ZkeyError> {
    let conf = require(w)?;
    keyops::check_volumes_free(w, name, &spec.volumes)?;
    let mut client = conf.client()?;
    let mut kt = None;
    for t in std::iter::once(spec.key_type).chain(KeyType::ALL) {
        if client.supports_key_type(t.name()).map_err(plugin_err)? {
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
    let mut props = KeyProperties {
        volumes: spec.volumes.clone(),
        volume_type: spec.volume_type,
        sector_size: spec.sector_size,
        description: spec.description.clone(),
        ..KeyProperties::default()
    };
    let mut kprops = kms_properties(name.as_str(), &props);
    let (key, ids) = if spec.xts {
        kprops.insert("xts-key".into(), "XTS-KEY-1".into());
        let (k1, id1, l1) = client
            .generate_key(
                kt.name(),
                spec.bits,
                XtsPart::Xts1,
                Some(&format!("{name}.xts1")),
                kprops.clone(),
            )
            .map_err(plugin_err)?;
        kprops.insert("xts-key".into(), "XTS-KEY-2".into());
        kprops.insert("xts-key1-id".into(), id1.clone());
        let (k2, id2, l2) = client
            .generate_key(
                kt.name(),
                spec.bits,
                XtsPart::Xts2,
                Some(&format!("{name}.xts2")),
                kprops,
            )
            .map_err(plugin_err)?;
        client
            .set_key_properties(
                &id1,
                BTreeMap::from([("xts-key2-id".to_string(), Some(id2.clone()))]),
            )
            .map_err(plugin_err)?;
        (
            SecureKey::xts(Token::parse(&k1)?, Token::parse(&k2)?)?,
            vec![(id1, l1), (id2, l2)],
        )
    } else {
        let (k, id, l) = client
            .generate_key(
                kt.name(),
                spec.bits,
                XtsPart::None,
                Some(name.as_str()),
                kprops,
            )
            .map_err(plugin_err)?;
        (SecureKey::single(Token::parse(&k)?), vec![(id, l)])
    };
    let base = keyops::properties_for(ad, &key, &spec)?;
    props = KeyProperties {
        kms: Some(conf.kms.clone()),
        ..base
    };
    set_ids(&mut props, &ids);
    // The VP is known only now: record it in the KMS for refresh and disaster recovery.
    if let Some(vp) = props.verification_pattern {
        for (id, _) in &ids {
            client
                .set_key_properties(
                    id,
                    BTreeMap::from([("verification-pattern".to_string(), Some(vp.to_string()))]),
                )
                .map_err(plugin_err)?;
        }
    }
    client.close().map_err(plugin_err)?;
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
pub fn remove(r: &Reader<'_>, p: &KeyProperties) -> Result<(), ZkeyError> {
    let conf = require(r)?;
    let mut client = conf.client()?;
    for id in key_ids(p) {
        client
            .remove_key(&id, BTreeMap::new())
            .map_err(plugin_err)?;
    }
    client.close().map_err(plugin_err)
}

fn import_secure_key(
    client: &mut PluginClient,
    ids: &[String],
    kt: KeyType,
) -> Result<SecureKey, ZkeyError> {
    let tokens = ids
        .iter()
        .map(|id| {
            client
                .import_key(id, kt.name())
                .map_err(plugin_err)
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

/// What a refresh or import did with one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyOutcome {
    pub name: String,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Re-imports bound keys under the CURRENT master key, each checked against its stored VP.
pub fn refresh(
    w: &Writer<'_>,
    ad: &Adapters,
    names: Option<&crate::Pattern>,
    reload_properties: bool,
) -> Result<Vec<KeyOutcome>, ZkeyError> {
    let conf = require(w)?;
    let mut client = conf.client()?;
    let mut out = Vec::new();
    for e in w.entries()?.into_iter().flatten() {
        if !e.properties.is_kms_bound() || names.is_some_and(|p| !p.matches_name(&e.name)) {
            continue;
        }
        let res = refresh_one(w, ad, &mut client, &e, reload_properties);
        out.push(KeyOutcome {
            name: e.name.to_string(),
            result: if res.is_ok() {
                "refreshed".into()
            } else {
                "failed".into()
            },
            error: res.err().map(|e| e.to_string()),
        });
    }
    client.close().map_err(plugin_err)?;
    Ok(out)
}

fn refresh_one(
    w: &Writer<'_>,
    ad: &Adapters,
    client: &mut PluginClient,
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
        if stored.to_string() != vp {
            return Err(ZkeyError::VpMismatch {
                name: e.name.to_string(),
                staged: vp,
                expected: stored.to_string(),
            });
        }
    }
    let mut p = e.properties.clone();
    if reload {
        let kp = client.get_key_properties(&ids[0]).map_err(plugin_err)?;
        apply_kms_properties(&mut p, &kp)?;
    }
    p.reencipher_time = Some(Timestamp::now());
    w.write_skey(&e.name, &key.to_bytes())?;
    w.write_info(&e.name, &p)?;
    // A staged copy belongs to the key that was just replaced.
    w.remove_staged(&e.name)?;
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
pub fn list(r: &Reader<'_>, label: Option<&str>) -> Result<Vec<KmsKey>, ZkeyError> {
    let conf = require(r)?;
    let mut client = conf.client()?;
    let keys = client
        .list_keys(label, BTreeMap::new(), BTreeMap::new())
        .map_err(plugin_err)?;
    client.close().map_err(plugin_err)?;
    Ok(keys
        .into_iter()
        .filter(|k| k.properties.get("xts-key").map(String::as_str) != Some("XTS-KEY-2"))
        .collect())
}

/// Rebuilds repository keys from the KMS (a new host, a lost repository): each active key with
/// a zkey name becomes a repository key, names and volume associations included. Keys whose
/// name exists already are skipped.
pub fn import(
    w: &Writer<'_>,
    ad: &Adapters,
    label: Option<&str>,
    names: Option<&crate::Pattern>,
    volume_check: impl Fn(&Volume) -> bool,
) -> Result<Vec<KeyOutcome>, ZkeyError> {
    let conf = require(w)?;
    let mut client = conf.client()?;
    let keys = client
        .list_keys(label, BTreeMap::new(), BTreeMap::new())
        .map_err(plugin_err)?;
    let mut out = Vec::new();
    for k in keys
        .iter()
        .filter(|k| k.properties.get("xts-key").map(String::as_str) != Some("XTS-KEY-2"))
    {
        let Some(name) = k.properties.get("zkey-name") else {
            continue;
        };
        if names.is_some_and(|p| !p.matches(name)) {
            continue;
        }
        let res = import_one(w, ad, &conf, &mut client, k, name, &volume_check);
        out.push(KeyOutcome {
            name: name.clone(),
            result: match &res {
                Ok(true) => "imported".into(),
                Ok(false) => "skipped".into(),
                Err(_) => "failed".into(),
            },
            error: res.err().map(|e| e.to_string()),
        });
    }
    client.close().map_err(plugin_err)?;
    Ok(out)
}

fn import_one(
    w: &Writer<'_>,
    ad: &Adapters,
    conf: &KmsConf,
    client: &mut PluginClient,
    k: &KmsKey,
    name: &str,
    volume_check: &dyn Fn(&Volume) -> bool,
) -> Result<bool, ZkeyError> {
    if k.state != "active" && k.state != "Active" {
        return Err(ZkeyError::Invalid(format!(
            "the key is {} in the KMS",
            k.state
        )));
    }
    let name = KeyName::new(name).map_err(|e| ZkeyError::Invalid(e.to_string()))?;
    if w.list_names()?.contains(&name) {
        return Ok(false);
    }
    let xts = k.properties.get("xts-key").map(String::as_str) == Some("XTS-KEY-1");
    let ids: Vec<String> = if xts {
        let second = k.properties.get("xts-key2-id").ok_or_else(|| {
            ZkeyError::Invalid("the first XTS key has no link to the second (xts-key2-id)".into())
        })?;
        vec![k.key_id.clone(), second.clone()]
    } else {
        vec![k.key_id.clone()]
    };
    let mut kt = None;
    for t in KeyType::ALL {
        if conf.apqns_for(t).is_empty()
            || !client.supports_key_type(t.name()).map_err(plugin_err)?
        {
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
        if props.verification_pattern.map(|v| v.to_string()).as_deref() != Some(stored.as_str()) {
            return Err(ZkeyError::VpMismatch {
                name: name.to_string(),
                staged: props
                    .verification_pattern
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                expected: stored.clone(),
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
    Ok(true)
}

/// Re-enciphers the plug-in's own keys (identity key, wrapping key); `only` limits it to the
/// key under one master key type (`apka`: the identity key, `aes`: the wrapping key).
pub fn reencipher(
    r: &Reader<'_>,
    mode: ReencipherMode,
    direction: MkDirection,
    only: Option<ap_sim::MkType>,
) -> Result<(ReencipherReport, Vec<String>), ZkeyError> {
    let conf = require(r)?;
    let mut client = conf.client()?;
    let options = only
        .map(|t| BTreeMap::from([("mktype".to_string(), t.to_string())]))
        .unwrap_or_default();
    let rep = client
        .reencipher(mode, direction, options)
        .map_err(plugin_err)?;
    let notices = client.take_notices();
    client.close().map_err(plugin_err)?;
    Ok((rep, notices))
}

/// The plug-ins named in kms-plugins.conf.
pub fn plugins() -> Result<(PathBuf, Vec<(String, PathBuf)>), ZkeyError> {
    let path = kms_plugin::plugin::plugins_conf_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ZkeyError::Io {
                action: "reading",
                path,
                source,
            })
        }
    };
    Ok((path.clone(), kms_plugin::plugin::parse_plugins_conf(&text)))
}
