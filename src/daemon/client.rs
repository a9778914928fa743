//! The control socket's client, typed: one method per command, requests built from a
//! [`Command`] and answers read into structs. The `stringban list|count|add|…` commands and
//! the MTA's ACL (`stringban add ADDR --reset`) go through it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request (the protocol's `cmd` and its keys; `None` is sent as null: the default).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    List {
        list: Option<String>,
    },
    Count {
        list: Option<String>,
    },
    Add {
        addr: String,
        ttl: Option<String>,
        list: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reset: bool,
    },
    Del {
        addr: String,
        list: Option<String>,
        /// Lift the peers' own bans of the address too (`del --fleet`).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        fleet: bool,
    },
    Flush {
        list: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        fleet: bool,
    },
    Stats,
    Status,
    Reload,
}

/// One ban of a `list` answer (times in Unix seconds).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct BanLine {
    pub list: String,
    pub key: String,
    pub first_seen: u64,
    pub last_seen: u64,
    pub expires_at: u64,
    pub ttl_left: u64,
    pub hits: u64,
    pub rule: Option<u64>,
    /// The rule's name (None for a ban by hand, or from an older daemon).
    #[serde(default)]
    pub rule_name: Option<String>,
    /// Bans served or being served by this source (escalation).
    #[serde(default)]
    pub offences: u64,
    /// The node of the fleet that banned it (None without a fleet).
    #[serde(default)]
    pub node: Option<String>,
}

/// The answer to `add`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Added {
    pub key: String,
    pub list: String,
    pub new: bool,
    /// With `reset`: the sessions reset, or why they could not be.
    #[serde(default)]
    pub reset: Option<ResetOutcome>,
}

/// What `add --reset` did to the address's live sessions.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ResetOutcome {
    #[serde(default)]
    pub sessions: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached or read.
    Io(io::Error),
    /// The daemon refused the request (`ok: false`): its reason.
    Refused(String),
    /// The answer was not what the protocol promises.
    Answer(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The io error itself is the source (printed after this by `{:#}`).
            ClientError::Io(_) => f.write_str("control socket"),
            ClientError::Refused(why) => f.write_str(why),
            ClientError::Answer(what) => write!(f, "control socket: unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A client of the control socket at a path.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
        }
    }

    /// Sends `cmd`; returns the answer lines, the final `ok` line last.
    pub fn call(&self, cmd: &Command) -> Result<Vec<Value>, ClientError> {
        let req = serde_json::to_value(cmd).map_err(|e| ClientError::Answer(e.to_string()))?;
        let answer = super::control::request(&self.path, &req).map_err(ClientError::Io)?;
        match answer.last() {
            Some(last) if last["ok"] == true => Ok(answer),
            Some(last) => Err(ClientError::Refused(
                last["error"].as_str().unwrap_or("refused").to_string(),
            )),
            None => Err(ClientError::Answer("no answer".into())),
        }
    }

    /// The final `ok` line's field `key`.
    fn last(&self, cmd: &Command, key: &str) -> Result<Value, ClientError> {
        let answer = self.call(cmd)?;
        answer
            .last()
            .and_then(|l| l.get(key))
            .cloned()
            .ok_or_else(|| ClientError::Answer(format!("no {key:?}")))
    }

    fn number(&self, cmd: &Command, key: &str) -> Result<u64, ClientError> {
        let v = self.last(cmd, key)?;
        v.as_u64()
            .ok_or_else(|| ClientError::Answer(format!("{key} = {v}")))
    }

    pub fn list(&self, list: Option<String>) -> Result<Vec<BanLine>, ClientError> {
        let answer = self.call(&Command::List { list })?;
        answer[..answer.len() - 1]
            .iter()
            .map(|b| {
                serde_json::from_value(b.clone())
                    .map_err(|e| ClientError::Answer(format!("{b}: {e}")))
            })
            .collect()
    }

    pub fn count(&self, list: Option<String>) -> Result<u64, ClientError> {
        self.number(&Command::Count { list }, "count")
    }

    pub fn add(
        &self,
        addr: String,
        ttl: Option<String>,
        list: Option<String>,
        reset: bool,
    ) -> Result<Added, ClientError> {
        let answer = self.call(&Command::Add {
            addr,
            ttl,
            list,
            reset,
        })?;
        let last = answer.last().cloned().unwrap_or(Value::Null);
        serde_json::from_value(last.clone())
            .map_err(|e| ClientError::Answer(format!("{last}: {e}")))
    }

    pub fn del(&self, addr: String, list: Option<String>, fleet: bool) -> Result<u64, ClientError> {
        self.number(&Command::Del { addr, list, fleet }, "removed")
    }

    pub fn flush(&self, list: Option<String>, fleet: bool) -> Result<u64, ClientError> {
        self.number(&Command::Flush { list, fleet }, "removed")
    }

    /// Every counter (the `stats` object).
    pub fn stats(&self) -> Result<Value, ClientError> {
        self.last(&Command::Stats, "stats")
    }

    /// Everything `stringban status` shows (the `status` object).
    pub fn status(&self) -> Result<Value, ClientError> {
        self.last(&Command::Status, "status")
    }

    /// Reloads and waits: what changed, or (refused) why not.
    pub fn reload(&self) -> Result<String, ClientError> {
        let done = self.last(&Command::Reload, "reloaded")?;
        Ok(done.as_str().unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_protocols() {
        let j = |c: Command| serde_json::to_string(&c).unwrap();
        assert_eq!(
            j(Command::Count { list: None }),
            r#"{"cmd":"count","list":null}"#
        );
        assert_eq!(
            j(Command::Add {
                addr: "198.18.0.7".into(),
                ttl: Some("1h".into()),
                list: None,
                reset: false
            }),
            r#"{"cmd":"add","addr":"198.18.0.7","ttl":"1h","list":null}"#
        );
        assert!(
            j(Command::Add {
                addr: "198.18.0.7".into(),
                ttl: None,
                list: None,
                reset: true
            })
            .ends_with(r#""reset":true}"#)
        );
        assert_eq!(j(Command::Reload), r#"{"cmd":"reload"}"#);
    }

    #[test]
    fn answers_read_into_structs() {
        let added: Added = serde_json::from_str(
            r#"{"ok":true,"key":"198.18.0.8","list":"spam","new":true,"reset":{"sessions":2}}"#,
        )
        .unwrap();
        assert_eq!(added.reset.unwrap().sessions, 2);
        let ban: BanLine = serde_json::from_str(
            r#"{"list":"spam","key":"198.18.0.7","first_seen":1,"last_seen":2,"expires_at":3,"ttl_left":4,"hits":5,"rule":null}"#,
        )
        .unwrap();
        assert_eq!((ban.hits, ban.rule), (5, None));
    }
}
