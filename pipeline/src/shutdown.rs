//! Shutdown: one signal future (ctrl-c or SIGTERM) cancels a [`CancellationToken`] that is
//! passed down explicitly to every server and worker.
//!
//! Protocol: HTTP servers stop accepting and finish open requests; workers stop pulling,
//! let in-flight messages finish (ack, nak or dead-letter) and return. Messages a worker
//! had buffered but not started are left unacked and the server redelivers them to
//! another replica after `ack_wait`.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first ctrl-c or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
