//! The kernel's device events (uevents), read from a `NETLINK_KOBJECT_UEVENT` socket: what
//! udev listens to. A step that waits for a device (storage for its disks, the hotplug watch
//! for new devices' drivers) sleeps on this socket and looks again when the kernel says
//! something changed, instead of looking every 100 ms.
//!
//! Only the kernel sends on group 1, and anyone may listen: no privilege is needed, so host
//! tests use it too. A message is `ACTION@DEVPATH`, then `KEY=VALUE` lines, each ended by a
//! NUL byte.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The kernel's multicast group of uevents (udev's own daemon re-sends on group 2).
const KERNEL_GROUP: u32 = 1;

/// A socket that receives the kernel's uevents from the moment it is opened: open it before
/// the first look at the devices, so that nothing that happens after that look is missed.
pub struct Uevents {
    socket: OwnedFd,
    /// The read end of a pipe whose write end is [`Waker`]'s: a byte there ends a wait.
    wake: OwnedFd,
    waker: Waker,
}

/// Ends the current or next [`Uevents::wait`] from another thread (a watch told to stop).
#[derive(Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        // The pipe is non-blocking: when full, a wake is pending already.
        let _ = nix::unistd::write(self.0.as_fd(), &[1]);
    }
}

impl Uevents {
    pub fn open() -> nix::Result<Uevents> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &NetlinkAddr::new(0, KERNEL_GROUP),
        )?;
        let (wake, waker) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Uevents {
            socket,
            wake,
            waker: Waker(Arc::new(waker)),
        })
    }

    /// What ends this socket's waits from another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Waits until an event `wanted` accepts arrives (true), the [`Waker`] is woken (true), or
    /// `timeout` passes (false). Events `wanted` refuses are read and dropped. A socket error
    /// (a full receive buffer drops events: ENOBUFS) counts as an event, since one may have
    /// been lost.
    pub fn wait(&self, timeout: Duration, wanted: impl Fn(&Event) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buffer = vec![0u8; 8192];
        loop {
            // Whatever is queued first, without blocking.
            loop {
                match recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.socket),
                    &mut buffer,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(len) => {
                        if wanted(&Event::parse(&buffer[..len.min(buffer.len())])) {
                            return true;
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return true,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return true,
            }
            if fds[1].any().unwrap_or(false) {
                let mut byte = [0u8; 16];
                let _ = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.wake), &mut byte);
                return true;
            }
        }
    }
}

/// One uevent: its action, device path and keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `add`, `remove`, `change`, `bind`, ...
    pub action: String,
    pub devpath: String,
    /// `SUBSYSTEM`, `DEVNAME`, `MODALIAS`, ... in the order sent.
    pub keys: Vec<(String, String)>,
}

impl Event {
    /// Parses a kernel uevent; bytes that are not one give an event without action.
    pub fn parse(bytes: &[u8]) -> Event {
        let mut fields = bytes
            .split(|b| *b == 0)
            .map(|field| String::from_utf8_lossy(field).into_owned());
        let mut event = Event::default();
        if let Some((action, devpath)) = fields.next().as_deref().and_then(|h| h.split_once('@')) {
            event.action = action.to_owned();
            event.devpath = devpath.to_owned();
        }
        event.keys = fields
            .filter_map(|field| {
                field
                    .split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        event
    }

    /// The value of `key`, when the event has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A block device (a disk or partition) appeared or changed (a medium, a loop device's
    /// backing file).
    pub fn is_block(&self) -> bool {
        self.get("SUBSYSTEM") == Some("block") && self.action != "remove"
    }

    /// A device that wants a driver appeared.
    pub fn wants_driver(&self) -> bool {
        self.action == "add" && self.get("MODALIAS").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_uevent_gives_its_action_path_and_keys() {
        let bytes = b"add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0SUBSYSTEM=block\0DEVNAME=vda\0\
DEVTYPE=disk\0SEQNUM=1234\0";
        let event = Event::parse(bytes);
        assert_eq!(event.action, "add");
        assert_eq!(
            event.devpath,
            "/devices/pci0000:00/0000:00:04.0/virtio1/block/vda"
        );
        assert_eq!(event.get("DEVNAME"), Some("vda"));
        assert!(event.is_block());
        assert!(!event.wants_driver());
        let usb = Event::parse(
            b"add@/devices/usb2/2-1/2-1:1.0\0SUBSYSTEM=usb\0MODALIAS=usb:v46F4p0001\0",
        );
        assert!(usb.wants_driver());
        assert!(!usb.is_block());
        let removed = Event::parse(b"remove@/devices/virtual/block/loop3\0SUBSYSTEM=block\0");
        assert!(!removed.is_block());
        assert_eq!(Event::parse(b"libudev\0\xfe\xca"), Event::default());
    }

    /// The bytes the kernel sends for `event`.
    fn render(event: &Event) -> Vec<u8> {
        let mut bytes = format!("{}@{}", event.action, event.devpath).into_bytes();
        for (key, value) in &event.keys {
            bytes.push(0);
            bytes.extend(format!("{key}={value}").bytes());
        }
        bytes.push(0);
        bytes
    }

    proptest::proptest! {
        /// Uevents as the kernel sends them parse back to what was sent; mutated (bytes
        /// replaced, the message cut anywhere), they never panic and every key read is a key.
        #[test]
        fn fuzz_uevent_parse(
            action in "(add|remove|change|bind|unbind|move|online)",
            devpath in "(/[a-z0-9:._-]{1,12}){1,6}",
            keys in proptest::collection::vec(("[A-Z_]{1,10}", "[ -~]{0,24}"), 0..8),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..4,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let event = Event { action, devpath, keys };
            let bytes = render(&event);
            proptest::prop_assert_eq!(&Event::parse(&bytes), &event);
            let mut mutated = bytes.clone();
            for (at, value) in flips {
                let at = at.index(mutated.len());
                mutated[at] = value;
            }
            let parsed = Event::parse(&mutated[..cut.index(mutated.len() + 1)]);
            for (key, _) in &parsed.keys {
                proptest::prop_assert!(!key.contains('=') && !key.contains('\0'), "{:?}", key);
            }
            let _ = (parsed.is_block(), parsed.wants_driver());
        }
    }

    #[test]
    fn a_wait_without_events_ends_at_its_timeout() {
        let events = Uevents::open().unwrap();
        let started = Instant::now();
        // No event this filter takes can come: the wait runs its course.
        assert!(!events.wait(Duration::from_millis(50), |_| false));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_waker_ends_a_wait_from_another_thread() {
        let events = Uevents::open().unwrap();
        let waker = events.waker();
        let started = Instant::now();
        let thread = std::thread::spawn(move || waker.wake());
        assert!(events.wait(Duration::from_secs(30), |_| false));
        assert!(started.elapsed() < Duration::from_secs(30));
        thread.join().unwrap();
    }
}
