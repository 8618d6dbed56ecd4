//! ringcast-proto: the first layer of ringcast (docs/architecture.md).
//!
//! The protocols, bytes only: the line decoder, the command parser and the formatting of
//! every line the server sends; the HTTP request head and responses; WebSocket frames.
//! Nothing here knows about sockets, rooms or threads.

mod command;
mod decoder;
pub mod http;
pub mod publish;
pub mod reply;
pub mod ws;

pub use command::{parse, valid_name, Command, CommandError, NAME_MAX};
pub use decoder::{Frame, LineDecoder};
