//! Storage throughput benchmark: Vireo's vol-upload (of a file, which the CLI passes open to the
//! service, and from a pipe, which crosses the gRPC streams) and vol-clone (vireod through the
//! gateway, with the `vireo` CLI) against the tools a user would otherwise reach for, on the same
//! 1 GiB of random data in the same run: `cp`, `qemu-img convert` and, where Debian's libvirt is
//! installed, `virsh vol-upload` and `virsh vol-clone`. Everything runs twice: on a tmpfs (the
//! software path alone) and on the disk (whose speed on these virtual machines swings several
//! fold from one run to the next). Medians of several runs, each from a settled page cache; ratios are throughput relative to Vireo's (target: Vireo at least 90% of
//! each). Vireo answers only once the data is on disk (fsync, as libvirt's vol-upload does), so
//! `cp` and `qemu-img convert` are shown with and without a final fsync: the durable rows are the
//! like-for-like ones.
//!
//! Run as root: `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench storage_throughput`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_tests::{Server, median, timed};

const RUNS: usize = 7;
const BYTES: u64 = 1 << 30;

fn rate(duration: Duration) -> String {
    format!(
        "{:7.0} MiB/s ({:.2} s)",
        (BYTES >> 20) as f64 / duration.as_secs_f64(),
        duration.as_secs_f64()
    )
}

/// Writes back what earlier steps left dirty, so that no step pays for the one before it.
fn settle() {
    timed("sync", &mut Command::new("sync"));
}

/// `command`'s time, from a settled page cache.
fn measured(what: &str, command: &mut Command) -> Duration {
    settle();
    timed(what, command)
}

/// `command`'s time plus that of flushing `written` to disk, as Vireo does before it answers.
fn measured_durable(what: &str, command: &mut Command, written: &Path) -> Duration {
    settle();
    let started = Instant::now();
    timed(what, command);
    timed("sync", Command::new("sync").arg(written));
    started.elapsed()
}

struct Row {
    what: &'static str,
    time: Duration,
}

/// A tmpfs for the run: the software path without the disk's noise.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        timed(
            "mount tmpfs",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=8G", "vireo-bench"])
                .arg(dir.path()),
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn main() {
    let server = Server::vireod();
    let ram = Tmpfs::mount();
    let disk = tempfile::tempdir_in("/var/tmp").unwrap();
    let places = [
        ("tmpfs: the software path alone", ram.0.path()),
        (
            "disk: this machine's virtual disk, whose speed varies run to run",
            disk.path(),
        ),
    ];
    for (index, (place, dir)) in places.into_iter().enumerate() {
        let pool = format!("bench{index}");
        let report = measure(&server, &pool, dir);
        println!("\nstorage throughput on {place}; 1 GiB of random data, median of {RUNS}");
        report.print();
    }
}

struct Report {
    upload: Duration,
    streamed: Duration,
    clone: Duration,
    upload_peers: Vec<Row>,
    clone_peers: Vec<Row>,
}

impl Report {
    fn print(&self) {
        print_against(
            "vireo vol-upload of a file",
            self.upload,
            &self.upload_peers,
        );
        print_against(
            "vireo vol-upload from a pipe (gRPC stream, as a remote client)",
            self.streamed,
            &self.upload_peers,
        );
        print_against("vireo vol-clone", self.clone, &self.clone_peers);
    }
}

/// Every measurement with the pool, the data and the peers' files under `dir`.
fn measure(server: &Server, pool: &str, dir: &Path) -> Report {
    let vireo = |args: &[&str]| {
        let mut command = Command::new(vireo_tests::binary("vireo"));
        command
            .arg("-c")
            .arg(format!("unix://{}", server.socket.display()))
            .args(args);
        command
    };
    let data = dir.join("data.bin");
    vireo_tests::write_random_file(&data, (BYTES >> 20) as usize, 0);
    let data_text = data.display().to_string();
    let pool_dir = dir.join("pool");
    let pool_dir_text = pool_dir.display().to_string();
    timed(
        "pool-create-as",
        &mut vireo(&[
            "pool-create-as",
            pool,
            "dir",
            "--target",
            &pool_dir_text,
            "--build",
        ]),
    );
    timed(
        "vol-create-as",
        &mut vireo(&["vol-create-as", pool, "src", "1G"]),
    );
    let mut upload = Vec::new();
    let mut streamed = Vec::new();
    let mut clone = Vec::new();
    let mut cp = Vec::new();
    let mut cp_sync = Vec::new();
    let mut convert = Vec::new();
    let mut convert_sync = Vec::new();
    for run in 0..RUNS {
        upload.push(measured(
            "vol-upload",
            &mut vireo(&["vol-upload", "src", &data_text, "--pool", pool]),
        ));
        // From a pipe the CLI cannot pass its file: the bytes cross the gRPC streams, as they
        // do from a remote client.
        let mut cat = Command::new("cat")
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = cat.stdout.take().unwrap();
        streamed.push(measured(
            "vol-upload from a pipe",
            vireo(&["vol-upload", "src", "/dev/stdin", "--pool", pool]).stdin(pipe),
        ));
        cat.wait().unwrap();
        let name = format!("clone{run}");
        clone.push(measured(
            "vol-clone",
            &mut vireo(&["vol-clone", "src", &name, "--pool", pool]),
        ));
        timed(
            "vol-delete",
            &mut vireo(&["vol-delete", &name, "--pool", pool]),
        );
        let copy = pool_dir.join("cp.img");
        let cp_command = || {
            let mut command = Command::new("cp");
            command.arg(&data).arg(&copy);
            command
        };
        cp.push(measured("cp", &mut cp_command()));
        std::fs::remove_file(&copy).unwrap();
        cp_sync.push(measured_durable("cp", &mut cp_command(), &copy));
        std::fs::remove_file(&copy).unwrap();
        let converted = pool_dir.join("convert.img");
        let convert_command = || {
            let mut command = Command::new("qemu-img");
            command
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(pool_dir.join("src"))
                .arg(&converted);
            command
        };
        convert.push(measured("qemu-img convert", &mut convert_command()));
        std::fs::remove_file(&converted).unwrap();
        convert_sync.push(measured_durable(
            "qemu-img convert",
            &mut convert_command(),
            &converted,
        ));
        std::fs::remove_file(&converted).unwrap();
    }
    let (upload, clone) = (median(upload), median(clone));
    let mut upload_peers = vec![
        Row {
            what: "cp",
            time: median(cp),
        },
        Row {
            what: "cp + fsync",
            time: median(cp_sync),
        },
    ];
    let mut clone_peers = vec![
        Row {
            what: "qemu-img convert",
            time: median(convert),
        },
        Row {
            what: "convert + fsync",
            time: median(convert_sync),
        },
    ];
    match libvirt(&data, dir) {
        Ok((virsh_upload, virsh_clone)) => {
            upload_peers.push(Row {
                what: "virsh vol-upload",
                time: virsh_upload,
            });
            clone_peers.push(Row {
                what: "virsh vol-clone",
                time: virsh_clone,
            });
        }
        Err(why) => println!("libvirt not compared: {why}"),
    }
    timed(
        "vol-delete",
        &mut vireo(&["vol-delete", "src", "--pool", pool]),
    );
    timed("pool-destroy", &mut vireo(&["pool-destroy", pool]));
    Report {
        upload,
        streamed: median(streamed),
        clone,
        upload_peers,
        clone_peers,
    }
}

fn print_against(what: &str, vireo: Duration, peers: &[Row]) {
    println!("{what}\n  {:<20}{}", "vireo", rate(vireo));
    for peer in peers {
        println!(
            "  {:<20}{}   vireo/peer throughput {:.2}",
            peer.what,
            rate(peer.time),
            peer.time.as_secs_f64() / vireo.as_secs_f64()
        );
    }
}

/// virsh vol-upload and vol-clone on a transient dir pool of libvirtd, when it runs.
fn libvirt(data: &Path, work: &Path) -> Result<(Duration, Duration), String> {
    vireo_tests::libvirt_ready()?;
    let dir = work.join("libvirt-pool");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let virsh = |args: &[&str]| {
        let mut command = Command::new("virsh");
        command.args(["-q", "-c", "qemu:///system"]).args(args);
        command
    };
    let dir_text = dir.display().to_string();
    timed(
        "virsh pool-create-as",
        &mut virsh(&[
            "pool-create-as",
            "vireo-bench",
            "dir",
            "--target",
            &dir_text,
        ]),
    );
    // A failing step panics (the run is void); the pool is transient and goes with libvirtd's
    // next restart at worst.
    {
        timed(
            "virsh vol-create-as",
            &mut virsh(&["vol-create-as", "vireo-bench", "src", "1G"]),
        );
        let data_text = data.display().to_string();
        let mut upload = Vec::new();
        let mut clone = Vec::new();
        for run in 0..RUNS {
            upload.push(measured(
                "virsh vol-upload",
                &mut virsh(&["vol-upload", "src", &data_text, "--pool", "vireo-bench"]),
            ));
            let name = format!("clone{run}");
            clone.push(measured(
                "virsh vol-clone",
                &mut virsh(&["vol-clone", "src", &name, "--pool", "vireo-bench"]),
            ));
            timed(
                "virsh vol-delete",
                &mut virsh(&["vol-delete", &name, "--pool", "vireo-bench"]),
            );
        }
        let _ = virsh(&["vol-delete", "src", "--pool", "vireo-bench"]).output();
        let _ = virsh(&["pool-destroy", "vireo-bench"]).output();
        Ok((median(upload), median(clone)))
    }
}
