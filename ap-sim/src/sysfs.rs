//! STUB: being written.
use std::io;
use std::path::Path;

use crate::adapter::Bus;

pub fn render(_bus: &Bus, _root: &Path) -> io::Result<()> {
    Ok(())
}
