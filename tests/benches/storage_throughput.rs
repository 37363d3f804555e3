//! Storage throughput benchmark: Vireo's vol-upload (of a file, which the CLI passes open to the
//! service, and from a pipe, which crosses the gRPC streams) and vol-clone (vireod through the
//! gateway, with the `vireo` CLI) against the tools a user would otherwise reach for, on the same 1 GiB of
//! random data in the same run: `cp` (with and without a final fsync), `qemu-img convert`, and,
//! where Debian's libvirt is installed, `virsh vol-upload` and `virsh vol-clone`. Medians of
//! several runs; ratios are throughput relative to Vireo's (target: Vireo at least 90% of each).
//!
//! Run as root: `cargo build --release --workspace --bins && cargo bench -p vireo-tests --bench storage_throughput`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_tests::{Server, median, timed};

const RUNS: usize = 3;
const BYTES: u64 = 1 << 30;

fn rate(duration: Duration) -> String {
    format!(
        "{:7.0} MiB/s ({:.2} s)",
        (BYTES >> 20) as f64 / duration.as_secs_f64(),
        duration.as_secs_f64()
    )
}

struct Row {
    what: &'static str,
    time: Duration,
}

fn main() {
    let server = Server::vireod();
    let vireo = |args: &[&str]| {
        let mut command = Command::new(vireo_tests::binary("vireo"));
        command
            .arg("-c")
            .arg(format!("unix://{}", server.socket.display()))
            .args(args);
        command
    };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = work.path().join("data.bin");
    vireo_tests::write_random_file(&data, (BYTES >> 20) as usize, 0);
    let data_text = data.display().to_string();
    let pool_dir = server.state_dir.join("images");
    timed(
        "vol-create-as",
        &mut vireo(&["vol-create-as", "default", "src", "1G"]),
    );

    let mut upload = Vec::new();
    let mut streamed = Vec::new();
    let mut clone = Vec::new();
    let mut cp = Vec::new();
    let mut cp_sync = Vec::new();
    let mut convert = Vec::new();
    for run in 0..RUNS {
        upload.push(timed(
            "vol-upload",
            &mut vireo(&["vol-upload", "src", &data_text, "--pool", "default"]),
        ));
        // From a pipe the CLI cannot pass its file: the bytes cross the gRPC streams, as they
        // do from a remote client.
        let mut cat = Command::new("cat")
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = cat.stdout.take().unwrap();
        streamed.push(timed(
            "vol-upload from a pipe",
            vireo(&["vol-upload", "src", "/dev/stdin", "--pool", "default"]).stdin(pipe),
        ));
        cat.wait().unwrap();
        let name = format!("clone{run}");
        clone.push(timed(
            "vol-clone",
            &mut vireo(&["vol-clone", "src", &name, "--pool", "default"]),
        ));
        timed(
            "vol-delete",
            &mut vireo(&["vol-delete", &name, "--pool", "default"]),
        );
        let copy = pool_dir.join("cp.img");
        cp.push(timed("cp", Command::new("cp").arg(&data).arg(&copy)));
        std::fs::remove_file(&copy).unwrap();
        let started = Instant::now();
        timed("cp", Command::new("cp").arg(&data).arg(&copy));
        timed("sync", Command::new("sync").arg(&copy));
        cp_sync.push(started.elapsed());
        std::fs::remove_file(&copy).unwrap();
        let converted = pool_dir.join("convert.img");
        convert.push(timed(
            "qemu-img convert",
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(pool_dir.join("src"))
                .arg(&converted),
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
    let mut clone_peers = vec![Row {
        what: "qemu-img convert",
        time: median(convert),
    }];
    match libvirt(&data, work.path()) {
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
    println!("\nstorage throughput, 1 GiB of random data, median of {RUNS}");
    print_against("vireo vol-upload of a file", upload, &upload_peers);
    print_against(
        "vireo vol-upload from a pipe (gRPC stream, as a remote client)",
        median(streamed),
        &upload_peers,
    );
    print_against("vireo vol-clone", clone, &clone_peers);
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
            upload.push(timed(
                "virsh vol-upload",
                &mut virsh(&["vol-upload", "src", &data_text, "--pool", "vireo-bench"]),
            ));
            let name = format!("clone{run}");
            clone.push(timed(
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
