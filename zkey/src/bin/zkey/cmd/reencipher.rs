//! `reencipher` of repository keys or a key file.

use crate::prelude::*;

pub(crate) fn reencipher_cmd(a: ReencipherArgs) -> Result<ExitCode> {
    let req = a.way.request()?;
    let (way, mode) = (req.way, req.mode);
    let ad = adapters()?;
    if let Some(file) = &a.file {
        zkey::ops::reencipher_file(&ad, file, a.output.as_deref(), way, mode)?;
        println!(
            "Secure key {} re-enciphered{}.",
            file.display(),
            a.output
                .as_ref()
                .map(|o| format!(" into {}", o.display()))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let repo = open_repo()?;
    let w = repo.write(lock_wait())?;
    let sel = a.keys.selection();
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut n = 0;
    let done = zkey::ops::reencipher(&w, &ad, &sel, &req, a.force, &mut TermUi::default(), |r| {
        n += 1;
        if tty {
            eprint!("\r\x1b[2K[{n}] {}", r.name);
        }
        if !a.json {
            if tty {
                eprint!("\r\x1b[2K");
            }
            print_result(r);
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!("{}", done.report.summary);
        print_readiness(&done.readiness);
        println!("{}", done.readiness.headline());
    }
    Ok(exit_if(done.report.summary.failed > 0, Exit::Failed))
}
