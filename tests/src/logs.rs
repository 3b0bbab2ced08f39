//! Capturing what the services log, for tests that read their own log. The subscriber is
//! process-wide, so such a test has a test binary of its own: another test in the same
//! process would log lines of its own into the capture.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

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

/// What the shared capture records: pushline's crates at `debug`, everything else at `info`.
pub const FILTER: &str =
    "info,pipeline=debug,ingest=debug,registry=debug,dispatcher_apns=debug,dispatcher_fcm=debug";

/// The process-wide capture of everything logged at [`FILTER`], installed by the first
/// caller; later callers get the same capture.
pub fn shared() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let writer = capture.clone();
            tracing_subscriber::fmt()
                .with_env_filter(FILTER)
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            capture
        })
        .clone()
}
