//! `generate`, `import`, `remove`, `change`.

use crate::prelude::*;

pub(crate) fn generate(a: GenerateArgs) -> Result<()> {
    let ad = adapters()?;
    let spec = new_key_spec(&a.meta, a.key_type, a.keybits, a.xts)?;
    let clear = a
        .clearkey
        .as_deref()
        .map(zkey::ops::read_clear_key_file)
        .transpose()?;
    let source = clear
        .as_deref()
        .map_or(zkey::ops::Source::Random, |c| zkey::ops::Source::Clear(c));
    match (&a.file, &a.name) {
        (Some(file), None) => {
            if a.meta.volumes.is_some()
                || a.meta.description.is_some()
                || a.meta.gen_dummy_passphrase
                || a.meta.set_dummy_passphrase.is_some()
            {
                bail!("--volumes, --description and dummy passphrases need a repository key: use --name instead of a file");
            }
            let key = zkey::ops::generate_file(&ad, file, &spec, source)?;
            println!(
                "Secure key generated: {} ({}, {} bytes).",
                file.display(),
                key.key_type(),
                key.len()
            );
        }
        (None, Some(name)) => {
            let pass = dummy_pass(&a.meta)?;
            let repo = open_or_create_repo()?;
            let w = repo.write(lock_wait())?;
            let added = zkey::ops::generate(&w, &ad, name, &spec, source, a.local, pass)?;
            print_added(&added);
            println!(
                "Secure key '{name}' generated in the repository ({}, {} bytes).",
                added.key.key_type(),
                added.key.len()
            );
        }
        _ => bail!("name the key with --name (repository) or give a FILE"),
    }
    Ok(())
}

pub(crate) fn import(a: ImportArgs) -> Result<()> {
    let ad = adapters()?;
    let bytes = zkey::ops::read_key_file(&a.file)?;
    let key = SecureKey::parse(&bytes).map_err(|e| anyhow!("{}: {e}", a.file.display()))?;
    let spec = new_key_spec(&a.meta, key.key_type(), key.key_bits(), key.is_xts())?;
    let pass = dummy_pass(&a.meta)?;
    let repo = open_or_create_repo()?;
    let w = repo.write(lock_wait())?;
    let added = zkey::ops::import(&w, &ad, &a.name, &key, &spec, pass)?;
    if added.under_old {
        eprintln!("zkey: WARNING: the key is enciphered with the OLD master key: re-encipher it with 'zkey reencipher -N {} --from-old' before the next SET", zkey::keyname::quote_selecting(a.name.as_str()));
    }
    print_added(&added);
    println!("Secure key '{}' imported into the repository.", a.name);
    Ok(())
}

pub(crate) fn remove(name: &KeyName, force: bool) -> Result<()> {
    let (repo, ad) = (open_repo()?, adapters()?);
    let notices = zkey::ops::remove(
        &repo.write(lock_wait())?,
        &ad,
        name,
        force,
        &mut TermUi::default(),
    )?;
    show_notices(&notices, false);
    println!("Key '{name}' removed.");
    Ok(())
}

pub(crate) fn change(a: ChangeArgs) -> Result<()> {
    use zkey::ops::PassphraseChange;
    let passphrase = if a.gen_dummy_passphrase {
        Some(PassphraseChange::Set(DummyPassphrase::Generate))
    } else if let Some(f) = &a.set_dummy_passphrase {
        Some(PassphraseChange::Set(DummyPassphrase::Given(
            zkey::ops::read_passphrase_file(f)?,
        )))
    } else if a.remove_dummy_passphrase {
        Some(PassphraseChange::Remove)
    } else {
        None
    };
    let c = zkey::ops::Change {
        description: a.description,
        volumes: a.volumes.as_deref().map(Edit::parse).transpose()?,
        volume_check: !a.no_volume_check,
        apqns: a.apqns.as_deref().map(Edit::parse).transpose()?,
        apqn_check: !a.no_apqn_check,
        sector_size: a.sector_size,
        volume_type: a.volume_type,
        passphrase,
        force: a.force,
    };
    let (repo, ad) = (open_repo()?, adapters()?);
    zkey::ops::change(
        &repo.write(lock_wait())?,
        &ad,
        &a.name,
        c,
        &mut TermUi::default(),
    )?;
    println!("Key '{}' changed.", a.name);
    Ok(())
}
