//! Clients over real sockets: the gateway the mesh's cores run (`gateway`), what travels on the
//! wire (`wire`), what each client is sent (`update`, sans-IO), what a client makes of it
//! (`viewer`, sans-IO), the private key that signs connect tokens (`key`), and the
//! load-generating bots that connect as clients do (`bots`).

pub mod bots;
pub mod gateway;
pub mod guard;
#[doc(hidden)]
pub mod harness;
pub mod key;
pub mod transport;
pub mod update;
pub mod viewer;
pub mod wire;

pub use gateway::{Gateway, GatewayStats, Seats, ViewEntity, Views, CLIENT_BYTES_PER_S_DEFAULT};
