//! Mock providers: each provider's mock comes from its own crate (its `testing` module,
//! on the frame of [`pipeline::mock`]: real TLS HTTP/2 servers that check what the real
//! provider checks, record every request, and answer as a test scripts them); the mocks
//! of Webex's APIs live here.
//!
//! Each mock makes its own CA at start; [`Mock::ca_pem`] is what a dispatcher is told to
//! trust. Waiting for requests uses a notification, never sleeps.

pub use dispatcher_apns::testing as apns;
pub use dispatcher_fcm::testing as fcm;
pub use dispatcher_webpush::testing as webpush;
pub use pipeline::mock::*;

pub mod webex_people;
pub mod webex_webhooks;
