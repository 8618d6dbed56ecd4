//! Parses one line into a command or a chat message.

use thiserror::Error;

/// Longest name or room name, in bytes.
pub const NAME_MAX: usize = 32;

/// What a client's line asks for.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Command<'a> {
    /// A chat line to relay as it is (a leading `//` was unescaped to `/`).
    Chat(&'a [u8]),
    /// An empty line: ignored.
    Empty,
    Join(&'a str),
    Nick(&'a str),
    Who,
    Rooms,
    Quit,
    Help,
    Stats,
    /// `/history [N]`: the room's N most recent lines (the server's default when `None`).
    History(Option<u64>),
    /// `/resume ROOM POS [EPOCH]`: be in ROOM and get every line of it after position
    /// POS (positions of the server run EPOCH, if given).
    Resume(&'a str, u64, Option<u64>),
    /// `/positions on|off`: chat lines with (or without) their room positions.
    Positions(bool),
    /// `/auth TOKEN`: identify with a signed token (`--auth`); the token is checked by
    /// the core's verifier, not here.
    Auth(&'a str),
}

/// Why a line was refused. The `Display` text is what the client reads after `* error: `.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("unknown command {0} (try /help)")]
    Unknown(String),
    #[error("{command} needs {what}")]
    MissingArgument {
        command: &'static str,
        what: &'static str,
    },
    #[error("{command} takes no arguments")]
    UnexpectedArgument { command: &'static str },
    #[error("invalid {what} {value:?}: use 1-{NAME_MAX} letters, digits, '_', '-' or '.'")]
    InvalidName { what: &'static str, value: String },
    #[error("{command} takes {what}, not {value:?}")]
    InvalidArgument {
        command: &'static str,
        what: &'static str,
        value: String,
    },
}

/// Parses a line (already without `\r\n`).
///
/// A line not starting with `/` is chat; `//` starts a chat line that begins with `/`.
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    if line.is_empty() {
        return Ok(Command::Empty);
    }
    let Some(rest) = line.strip_prefix(b"/") else {
        return Ok(Command::Chat(line));
    };
    if rest.starts_with(b"/") {
        return Ok(Command::Chat(rest));
    }
    let rest = rest.trim_ascii_end();
    let (word, arg) = match rest.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (&rest[..i], rest[i..].trim_ascii_start()),
        None => (rest, &b""[..]),
    };
    match word {
        b"join" => name_arg("/join", "room name", arg).map(Command::Join),
        b"nick" => name_arg("/nick", "name", arg).map(Command::Nick),
        b"who" => no_arg("/who", arg, Command::Who),
        b"rooms" => no_arg("/rooms", arg, Command::Rooms),
        b"quit" => no_arg("/quit", arg, Command::Quit),
        b"help" => no_arg("/help", arg, Command::Help),
        b"stats" => no_arg("/stats", arg, Command::Stats),
        b"history" if arg.is_empty() => Ok(Command::History(None)),
        b"history" => {
            number_arg("/history", "a number of lines", arg).map(|n| Command::History(Some(n)))
        }
        b"resume" => resume_args(arg),
        b"auth" => token_arg(arg),
        b"positions" => match arg {
            b"on" => Ok(Command::Positions(true)),
            b"off" => Ok(Command::Positions(false)),
            b"" => Err(CommandError::MissingArgument {
                command: "/positions",
                what: "on or off",
            }),
            _ => Err(invalid("/positions", "on or off", arg)),
        },
        _ => Err(CommandError::Unknown(format!(
            "/{}",
            String::from_utf8_lossy(&word[..word.len().min(NAME_MAX)])
        ))),
    }
}

fn no_arg<'a>(
    command: &'static str,
    arg: &[u8],
    ok: Command<'a>,
) -> Result<Command<'a>, CommandError> {
    if arg.is_empty() {
        Ok(ok)
    } else {
        Err(CommandError::UnexpectedArgument { command })
    }
}

fn invalid(command: &'static str, what: &'static str, arg: &[u8]) -> CommandError {
    CommandError::InvalidArgument {
        command,
        what,
        value: String::from_utf8_lossy(&arg[..arg.len().min(2 * NAME_MAX)]).into_owned(),
    }
}

/// A decimal number (at most 19 digits, so it fits a `u64`).
fn number_arg(command: &'static str, what: &'static str, arg: &[u8]) -> Result<u64, CommandError> {
    let digits = !arg.is_empty() && arg.len() <= 19 && arg.iter().all(u8::is_ascii_digit);
    let number = std::str::from_utf8(arg).ok().and_then(|s| s.parse().ok());
    match number {
        Some(n) if digits => Ok(n),
        _ => Err(invalid(command, what, arg)),
    }
}

/// `/auth TOKEN`: one word of printable ASCII (a JWT is base64url and dots).
fn token_arg(arg: &[u8]) -> Result<Command<'_>, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::MissingArgument {
            command: "/auth",
            what: "a token",
        });
    }
    match std::str::from_utf8(arg) {
        Ok(token) if arg.iter().all(u8::is_ascii_graphic) => Ok(Command::Auth(token)),
        _ => Err(invalid("/auth", "one token", arg)),
    }
}

/// `/resume ROOM POS`.
fn resume_args(arg: &[u8]) -> Result<Command<'_>, CommandError> {
    let missing = CommandError::MissingArgument {
        command: "/resume",
        what: "room name and position",
    };
    let Some(space) = arg.iter().position(|b| b.is_ascii_whitespace()) else {
        return Err(missing);
    };
    let room = name_arg("/resume", "room name", &arg[..space])?;
    let rest = arg[space..].trim_ascii_start();
    let (pos, epoch) = match rest.iter().position(|b| b.is_ascii_whitespace()) {
        Some(at) => (&rest[..at], Some(rest[at..].trim_ascii_start())),
        None => (rest, None),
    };
    let pos = number_arg("/resume", "a position", pos)?;
    let epoch = match epoch {
        Some(epoch) => Some(number_arg("/resume", "an epoch", epoch)?),
        None => None,
    };
    Ok(Command::Resume(room, pos, epoch))
}

/// Whether `name` follows the rules of names and room names: 1-`NAME_MAX` letters,
/// digits, `_`, `-` or `.` (a token's `sub` must, too).
pub fn valid_name(name: &str) -> bool {
    name_arg("", "", name.as_bytes()).is_ok()
}

fn name_arg<'a>(
    command: &'static str,
    what: &'static str,
    arg: &'a [u8],
) -> Result<&'a str, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::MissingArgument { command, what });
    }
    let valid = arg.len() <= NAME_MAX
        && arg
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    match std::str::from_utf8(arg) {
        Ok(name) if valid => Ok(name),
        _ => Err(CommandError::InvalidName {
            what,
            value: String::from_utf8_lossy(&arg[..arg.len().min(2 * NAME_MAX)]).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_lines_are_relayed_as_they_are() {
        assert_eq!(parse(b"hello /x"), Ok(Command::Chat(b"hello /x")));
        assert_eq!(parse(b"//join x"), Ok(Command::Chat(b"/join x")));
        assert_eq!(parse(b"\xff\xfe"), Ok(Command::Chat(b"\xff\xfe")));
        assert_eq!(parse(b" /who"), Ok(Command::Chat(b" /who")));
        assert_eq!(parse(b""), Ok(Command::Empty));
    }

    #[test]
    fn auth_takes_one_printable_token() {
        assert_eq!(parse(b"/auth a.b-c_d"), Ok(Command::Auth("a.b-c_d")));
        assert_eq!(parse(b"/auth  tok  "), Ok(Command::Auth("tok")));
        assert!(matches!(
            parse(b"/auth"),
            Err(CommandError::MissingArgument { .. })
        ));
        assert!(matches!(
            parse(b"/auth a b"),
            Err(CommandError::InvalidArgument { .. })
        ));
        assert!(matches!(
            parse(b"/auth \xff"),
            Err(CommandError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn commands_parse_with_arguments_and_spacing() {
        assert_eq!(parse(b"/join chess"), Ok(Command::Join("chess")));
        assert_eq!(parse(b"/join   chess  "), Ok(Command::Join("chess")));
        assert_eq!(parse(b"/nick al_ice-2.0"), Ok(Command::Nick("al_ice-2.0")));
        assert_eq!(parse(b"/who"), Ok(Command::Who));
        assert_eq!(parse(b"/rooms "), Ok(Command::Rooms));
        assert_eq!(parse(b"/quit"), Ok(Command::Quit));
        assert_eq!(parse(b"/help"), Ok(Command::Help));
        assert_eq!(parse(b"/stats"), Ok(Command::Stats));
        assert_eq!(parse(b"/history"), Ok(Command::History(None)));
        assert_eq!(parse(b"/history 5 "), Ok(Command::History(Some(5))));
        assert_eq!(
            parse(b"/resume chess 42"),
            Ok(Command::Resume("chess", 42, None))
        );
        assert_eq!(
            parse(b"/resume chess 42 7"),
            Ok(Command::Resume("chess", 42, Some(7)))
        );
        assert_eq!(
            parse(b"/resume  chess   0"),
            Ok(Command::Resume("chess", 0, None))
        );
        assert_eq!(parse(b"/positions on"), Ok(Command::Positions(true)));
        assert_eq!(parse(b"/positions off"), Ok(Command::Positions(false)));
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        let err = |l: &[u8]| parse(l).unwrap_err().to_string();
        assert_eq!(err(b"/dance"), "unknown command /dance (try /help)");
        assert_eq!(err(b"/"), "unknown command / (try /help)");
        assert_eq!(err(b"/join"), "/join needs room name");
        assert_eq!(err(b"/nick "), "/nick needs name");
        assert_eq!(err(b"/who me"), "/who takes no arguments");
        assert_eq!(
            err(b"/join two words"),
            "invalid room name \"two words\": use 1-32 letters, digits, '_', '-' or '.'"
        );
        assert!(err(&[b"/nick ".as_slice(), &[b'a'; 33]].concat()).starts_with("invalid name"));
        assert!(err(b"/nick \xc3\xa9").starts_with("invalid name"));
        assert_eq!(
            err(b"/history -1"),
            "/history takes a number of lines, not \"-1\""
        );
        assert_eq!(
            err(b"/history 99999999999999999999"),
            "/history takes a number of lines, not \"99999999999999999999\""
        );
        assert_eq!(
            err(b"/resume chess"),
            "/resume needs room name and position"
        );
        assert_eq!(
            err(b"/resume chess x"),
            "/resume takes a position, not \"x\""
        );
        assert_eq!(err(b"/positions"), "/positions needs on or off");
        assert_eq!(
            err(b"/positions maybe"),
            "/positions takes on or off, not \"maybe\""
        );
    }
}
