//! `zkey-kms-kmip`: the KMIP plug-in executable. zkey starts it and speaks the plug-in protocol
//! (see `kms_plugin::plugin`) on its stdin/stdout; it takes no arguments.

use std::process::ExitCode;

fn main() -> ExitCode {
    ap_sim::durable::arm_crash_points();
    if std::env::args_os().len() > 1 {
        eprintln!("zkey-kms-kmip is a zkey KMS plug-in: zkey runs it; it takes no arguments (register it in kms-plugins.conf as KMIP=zkey-kms-kmip)");
        return ExitCode::from(2);
    }
    let mut plugin = kms_plugin::kmip_plugin::KmipPlugin::new();
    match kms_plugin::plugin::serve(
        &mut plugin,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zkey-kms-kmip: the session with zkey broke: {e}");
            ExitCode::FAILURE
        }
    }
}
