//! Logging into a machine (manual 5.4): the SSH tunnel to a running machine's VNC console,
//! and resuming a suspended machine through its QEMU monitor socket.
//!
//! Where things are, as the manual has them: the machine of toolchain `<toolchain>`'s agent
//! instance `<instance>` serves VNC display `<instance>` (TCP port 5900 + instance) on the
//! host's loopback, and its QEMU monitor listens on the Unix socket
//! `/tmp/monitor-<toolchain>-<instance>`. Either monitor protocol is accepted there: the human
//! one (HMP, `-monitor unix:...`) or QMP (`-qmp unix:...`), told apart by QEMU's greeting.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::name::is_toolchain;

/// The QEMU monitor socket of a toolchain's agent instance; the toolchain name is checked, so
/// the path is always a file of /tmp.
pub fn monitor_socket(toolchain: &str, instance: u32) -> Result<PathBuf> {
    if !is_toolchain(toolchain) {
        return Err(Error::BadName {
            name: toolchain.to_string(),
            expected: "a toolchain name of ASCII letters, digits and `_`, e.g. default",
        });
    }
    Ok(PathBuf::from(format!(
        "/tmp/monitor-{toolchain}-{instance}"
    )))
}

/// The host's loopback TCP port of an instance's VNC console.
pub fn vnc_port(instance: u32) -> u32 {
    5900 + instance
}

/// The command that opens the tunnel: it forwards the local port to the host's VNC port and
/// keeps it open while a viewer is connected (`sleep` bounds how long one may take to connect).
pub fn tunnel_command(host: &str, port: u32, connect_within_secs: u32) -> Vec<String> {
    vec![
        "ssh".to_string(),
        "-f".to_string(),
        "-L".to_string(),
        format!("{port}:127.0.0.1:{port}"),
        host.to_string(),
        "sleep".to_string(),
        connect_within_secs.to_string(),
    ]
}

fn monitor_error(socket: &Path, message: impl Into<String>) -> Error {
    Error::Monitor {
        socket: socket.to_path_buf(),
        message: message.into(),
    }
}

enum Protocol {
    Human,
    Qmp,
}

/// A connection to a QEMU monitor, either protocol.
pub struct Monitor {
    socket: PathBuf,
    stream: UnixStream,
    protocol: Protocol,
    buffer: Vec<u8>,
}

const PROMPT: &str = "(qemu) ";

impl Monitor {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Monitor> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            monitor_error(
                socket,
                format!("cannot connect ({e}); is the machine running? (socket expected at /tmp/monitor-<toolchain>-<instance>)"),
            )
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| monitor_error(socket, e.to_string()))?;
        let mut monitor = Monitor {
            socket: socket.to_path_buf(),
            stream,
            protocol: Protocol::Human,
            buffer: Vec::new(),
        };
        let first = monitor.read_until(|b| b.contains(&b'\n') || b.ends_with(PROMPT.as_bytes()))?;
        if first.trim_start().starts_with('{') {
            monitor.protocol = Protocol::Qmp;
            monitor.qmp(r#"{"execute":"qmp_capabilities"}"#)?;
        } else if !first.contains(PROMPT) {
            monitor.read_until(|b| b.ends_with(PROMPT.as_bytes()))?;
        }
        Ok(monitor)
    }

    /// Reads until `done` holds for what was read, and returns it.
    fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) -> Result<String> {
        let mut chunk = [0u8; 4096];
        while !done(&self.buffer) {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| monitor_error(&self.socket, format!("no answer from QEMU: {e}")))?;
            if n == 0 {
                return Err(monitor_error(&self.socket, "QEMU closed the connection"));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&self.buffer).into_owned();
        self.buffer.clear();
        Ok(text)
    }

    fn write(&mut self, text: &str) -> Result<()> {
        self.stream
            .write_all(text.as_bytes())
            .map_err(|e| monitor_error(&self.socket, format!("cannot write: {e}")))
    }

    /// Sends one QMP command and returns its `return` value; events are skipped.
    fn qmp(&mut self, command: &str) -> Result<serde_json::Value> {
        self.write(command)?;
        self.write("\n")?;
        loop {
            let line = self.read_line()?;
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| monitor_error(&self.socket, format!("not QMP: {e}: {line}")))?;
            if let Some(error) = value.get("error") {
                return Err(monitor_error(&self.socket, format!("{command}: {error}")));
            }
            if let Some(result) = value.get("return") {
                return Ok(result.clone());
            }
        }
    }

    fn read_line(&mut self) -> Result<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim().to_string());
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| monitor_error(&self.socket, format!("no answer from QEMU: {e}")))?;
            if n == 0 {
                return Err(monitor_error(&self.socket, "QEMU closed the connection"));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs a human monitor command (`cont`, `info status`) and returns what it printed.
    pub fn human(&mut self, command: &str) -> Result<String> {
        match self.protocol {
            Protocol::Qmp => {
                let request = serde_json::json!({
                    "execute": "human-monitor-command",
                    "arguments": { "command-line": command },
                });
                let result = self.qmp(&request.to_string())?;
                Ok(result.as_str().unwrap_or_default().trim().to_string())
            }
            Protocol::Human => {
                self.write(command)?;
                self.write("\n")?;
                let text = self.read_until(|b| b.ends_with(PROMPT.as_bytes()))?;
                Ok(clean_human_output(&text))
            }
        }
    }
}

/// The human monitor echoes the command as it is typed (redrawing the line with terminal
/// escapes), then prints the output and the prompt: keeps only the output.
fn clean_human_output(text: &str) -> String {
    let output = text.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    let output = output.strip_suffix(PROMPT).unwrap_or(output);
    let mut plain = String::new();
    let mut chars = output.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            plain.push(c);
        }
    }
    plain.trim().to_string()
}

/// Resumes a suspended machine (`cont`) and returns its status afterwards. `socket` must be
/// the socket itself, not a symlink to one: in /tmp anyone may plant a name.
pub fn resume(socket: &Path, timeout: Duration) -> Result<String> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(monitor_error(
                socket,
                "not a socket: expected the Unix socket the machine's QEMU listens on \
                 (-monitor or -qmp unix:<path>,server=on)",
            ));
        }
    }
    let mut monitor = Monitor::connect(socket, timeout)?;
    let said = monitor.human("cont")?;
    if !said.is_empty() {
        return Err(monitor_error(socket, format!("cont: {said}")));
    }
    monitor.human("info status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_monitor_output_loses_its_echo_escapes_and_prompt() {
        let text =
            "i\u{1b}[K\u{1b}[Din\u{1b}[K\u{1b}[Dinfo status\r\nVM status: running\r\n(qemu) ";
        assert_eq!(clean_human_output(text), "VM status: running");
    }

    #[test]
    fn tunnel_and_socket_follow_the_manual() {
        assert_eq!(
            tunnel_command("build@build", vnc_port(1), 10).join(" "),
            "ssh -f -L 5901:127.0.0.1:5901 build@build sleep 10"
        );
        assert_eq!(
            monitor_socket("default", 2).unwrap(),
            PathBuf::from("/tmp/monitor-default-2")
        );
        let error = monitor_socket("../etc/x", 2).unwrap_err().to_string();
        assert!(
            error.starts_with("`../etc/x` is not a valid name"),
            "{error}"
        );
    }
}
