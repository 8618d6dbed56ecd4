//! Protocol v1, bytes only: the line decoder, the command parser and the formatting of
//! every line the server sends. Nothing here knows about sockets, rooms or threads.

mod command;
mod decoder;
pub mod reply;

pub use command::{parse, Command, CommandError, NAME_MAX};
pub use decoder::{Frame, LineDecoder};
