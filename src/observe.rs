//! How library calls that take a while tell the user what they are doing without
//! printing: the caller passes an [`Observer`]; the command line renders its notes
//! on stderr, and tests and quiet callers pass `&mut ()`.

/// Receives the lines a call has for the user: which device runs it, notes,
/// warnings.
pub trait Observer {
    fn note(&mut self, line: &str);
}

/// Ignores everything.
impl Observer for () {
    fn note(&mut self, _line: &str) {}
}
