//! COM1: a 16550 UART (vm-superio) at 0x3f8 on IRQ 4, whose output goes to a file, a pty, a unix
//! socket (one client at a time, which can also type), standard output, or nowhere.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{LineWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_COUNT: u16 = 8;
pub const COM1_IRQ: u32 = 4;

/// Where the guest's serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    File(PathBuf),
    Pty,
    Unix(PathBuf),
    Stdout,
    Null,
}

impl FromStr for SerialOutput {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            Some(("unix", path)) if !path.is_empty() => Ok(SerialOutput::Unix(path.into())),
            None if text == "pty" => Ok(SerialOutput::Pty),
            None if text == "stdout" => Ok(SerialOutput::Stdout),
            None if text == "null" => Ok(SerialOutput::Null),
            _ => Err(format!(
                "--serial `{text}`: expected file:PATH, unix:PATH, pty, stdout or null"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial output {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot allocate a pty: {0}")]
    Pty(std::io::Error),
    #[error("serial interrupt eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The serial interrupt: an eventfd that KVM turns into IRQ 4 (irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The most recent output a unix-socket client receives when it connects, so boot messages
/// printed before anyone attached are not lost.
const BACKLOG_BYTES: usize = 64 << 10;

/// The console's unix-socket side: the current client, if any, and the recent output.
#[derive(Default)]
struct SocketConsole {
    client: Option<UnixStream>,
    backlog: VecDeque<u8>,
}

/// One console client at a time over a unix socket (the UART's and the virtio-console's).
#[derive(Clone, Default)]
pub(crate) struct SocketClient(Arc<Mutex<SocketConsole>>);

/// Sends all of `data` unless the client's socket buffer is full (WouldBlock): a client that does
/// not read must never stall the vCPU writing to the UART. The socket itself stays blocking for
/// the thread that reads the client's keystrokes.
fn send_without_blocking(stream: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !data.is_empty() {
        // SAFETY: the pointer and length describe `data`; the fd is open for the stream's life.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let sent = usize::try_from(sent).map_err(|_| std::io::Error::last_os_error())?;
        data = data.get(sent..).unwrap_or_default();
    }
    Ok(())
}

impl SocketClient {
    /// Makes `stream` the client: it gets the backlog first.
    pub(crate) fn attach(&self, stream: UnixStream) {
        let Ok(mut console) = self.0.lock() else {
            return;
        };
        let (front, back) = console.backlog.as_slices();
        if send_without_blocking(&stream, front)
            .and_then(|()| send_without_blocking(&stream, back))
            .is_ok()
        {
            console.client = Some(stream);
        }
    }
}

impl Write for SocketClient {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Ok(mut console) = self.0.lock() else {
            return Ok(data.len());
        };
        console.backlog.extend(data);
        let excess = console.backlog.len().saturating_sub(BACKLOG_BYTES);
        console.backlog.drain(..excess);
        if let Some(stream) = console.client.as_ref() {
            match send_without_blocking(stream, data) {
                // A client too slow to read loses bytes, as a serial line without flow control.
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => console.client = None,
                Ok(()) => {}
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Uart = Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;
/// Feeds a client's keystrokes into the UART, on its own thread.
type InputPump = Box<dyn FnOnce(Arc<Mutex<Uart>>) + Send>;

/// The UART on the bus.
pub struct SerialPort {
    uart: Arc<Mutex<Uart>>,
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match (self.uart.lock(), u8::try_from(offset)) {
            (Ok(mut uart), Ok(offset)) => uart.read(offset),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(mut uart), Ok(offset), Some(value)) =
            (self.uart.lock(), u8::try_from(offset), data.first())
        {
            let _ = uart.write(offset, *value);
        }
    }
}

/// What the serial set-up tells the rest of the VMM (and `info`).
#[derive(Debug, Clone, Default)]
pub struct SerialInfo {
    /// The pty's path, when the output is a pty.
    pub pty: Option<PathBuf>,
}

/// Feeds bytes typed by a client into the UART's receive FIFO, waiting while it is full.
fn feed_input(uart: &Mutex<Uart>, mut input: impl Read) {
    let mut buffer = [0u8; 256];
    loop {
        let count = match input.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        let mut pending = &buffer[..count];
        while !pending.is_empty() {
            let taken = uart
                .lock()
                .ok()
                .and_then(|mut uart| uart.enqueue_raw_bytes(pending).ok())
                .unwrap_or(0);
            pending = &pending[taken..];
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn open_pty() -> Result<(OwnedFd, PathBuf), SerialError> {
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: openpty writes two fds into the given pointers; the name, termios and winsize
    // arguments may be null.
    let result = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(SerialError::Pty(std::io::Error::last_os_error()));
    }
    // SAFETY: openpty succeeded, so both are open fds we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // Raw mode, as a console expects: no echo, no line editing, no CR/LF translation.
    // SAFETY: termios is plain data; tcgetattr fills it from a valid fd.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    if unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut termios) } == 0 {
        // SAFETY: termios was filled by tcgetattr.
        unsafe { libc::cfmakeraw(&mut termios) };
        // SAFETY: valid fd and pointer.
        unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios) };
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .map_err(SerialError::Pty)?;
    // The slave stays open in the VMM so that output is kept while no client is attached.
    std::mem::forget(slave);
    Ok((master, path))
}

pub(crate) fn unix_listener(path: &Path) -> Result<UnixListener, SerialError> {
    crate::control::bind_socket(path).map_err(|source| SerialError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// The UART's registers and receive buffer, for save and restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialPortState {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl SerialPort {
    pub fn state(&self) -> SerialPortState {
        let Ok(uart) = self.uart.lock() else {
            return SerialPortState::default();
        };
        let state = uart.state();
        SerialPortState {
            registers: [
                state.baud_divisor_low,
                state.baud_divisor_high,
                state.interrupt_enable,
                state.interrupt_identification,
                state.line_control,
                state.line_status,
                state.modem_control,
                state.modem_status,
                state.scratch,
            ],
            in_buffer: state.in_buffer,
        }
    }
}

fn superio_state(state: &SerialPortState) -> vm_superio::serial::SerialState {
    let [
        baud_divisor_low,
        baud_divisor_high,
        interrupt_enable,
        interrupt_identification,
        line_control,
        line_status,
        modem_control,
        modem_status,
        scratch,
    ] = state.registers;
    vm_superio::serial::SerialState {
        baud_divisor_low,
        baud_divisor_high,
        interrupt_enable,
        interrupt_identification,
        line_control,
        line_status,
        modem_control,
        modem_status,
        scratch,
        in_buffer: state.in_buffer.clone(),
    }
}

/// Builds COM1 for `output`, with restored registers when given. Its interrupt eventfd must be
/// registered as an irqfd for `COM1_IRQ`.
pub fn build(
    output: &SerialOutput,
    restored: Option<&SerialPortState>,
) -> Result<(SerialPort, EventFd, SerialInfo), SerialError> {
    let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
    let trigger = IrqTrigger(interrupt.try_clone().map_err(SerialError::EventFd)?);
    let mut info = SerialInfo::default();
    let mut input: Option<InputPump> = None;
    let writer: Box<dyn Write + Send> = match output {
        SerialOutput::File(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SerialError::Open {
                    path: path.clone(),
                    source,
                })?;
            Box::new(LineWriter::new(file))
        }
        SerialOutput::Stdout => Box::new(LineWriter::new(std::io::stdout())),
        SerialOutput::Null => Box::new(std::io::sink()),
        SerialOutput::Pty => {
            let (master, path) = open_pty()?;
            info.pty = Some(path);
            let reader = File::from(master.try_clone().map_err(SerialError::Pty)?);
            input = Some(Box::new(move |uart| feed_input(&uart, reader)));
            Box::new(File::from(master))
        }
        SerialOutput::Unix(path) => {
            let listener = unix_listener(path)?;
            let client = SocketClient::default();
            let current = client.clone();
            input = Some(Box::new(move |uart| {
                for stream in listener.incoming().flatten() {
                    let Ok(reader) = stream.try_clone() else {
                        continue;
                    };
                    current.attach(stream);
                    let uart = uart.clone();
                    std::thread::spawn(move || feed_input(&uart, reader));
                }
            }));
            Box::new(client)
        }
    };
    let uart = match restored {
        None => Serial::new(trigger, writer),
        Some(state) => Serial::from_state(&superio_state(state), trigger, NoEvents, writer)
            .map_err(|_| {
                SerialError::EventFd(std::io::Error::other("restored serial state is invalid"))
            })?,
    };
    let uart = Arc::new(Mutex::new(uart));
    if let Some(input) = input {
        let uart = uart.clone();
        std::thread::Builder::new()
            .name("serial-input".into())
            .spawn(move || input(uart))
            .map_err(SerialError::EventFd)?;
    }
    Ok((SerialPort { uart }, interrupt, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse(),
            Ok(SerialOutput::Unix("/run/c.sock".into()))
        );
        assert_eq!("pty".parse(), Ok(SerialOutput::Pty));
        assert!("file:".parse::<SerialOutput>().is_err());
        assert!("tcp:1".parse::<SerialOutput>().is_err());
    }

    #[test]
    fn guest_bytes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let (mut port, _interrupt, _) = build(&SerialOutput::File(path.clone()), None).unwrap();
        for byte in b"hi\n" {
            port.write(0, &[*byte]);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi\n");
        let mut lsr = [0u8];
        port.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
