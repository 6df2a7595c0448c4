//! Not yet implemented: this crate is planned (see DESIGN.md in the shared folder and the open issue).
