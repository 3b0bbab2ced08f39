//! Capturing what the services log, for tests that read their own log: one capture per
//! test binary (the subscriber is process-wide).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything logged since [`capture`] was called.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide subscriber with `filter` (as `RUST_LOG` reads it), writing
/// plain text into the returned capture. Call once per test binary.
pub fn capture(filter: &str) -> Capture {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    capture
}
