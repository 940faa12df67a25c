//! `cargo xtask sweep --slurm` against a real Slurm cluster: one node on 127.0.0.1 (munged,
//! slurmctld and slurmd from Debian's packages, configured by this test in a temporary
//! folder). A two-run sweep goes through sbatch as a job array; one task is requeued after
//! its first epoch and must resume its run, not restart it; the evaluation job that waits
//! for the array writes the report. The scripts of `--dry-run` are checked without a cluster.
//!
//! The cluster test needs Slurm (`apt-get install slurmctld slurmd slurm-client munge`) and
//! root, so it is ignored by a plain `cargo test` and run with `--ignored` (as `.ci/run` does);
//! run so without Slurm, it stops with a message, and fails where `CI` is set.
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
    cmd
}

/// The sweep of both tests: two learning rates of the cnn on a 6,000-image subset, six
/// epochs of a few seconds each, one CPU per task.
fn sweep_args(out: &Path) -> Vec<String> {
    [
        "sweep",
        "--models",
        "cnn",
        "--set",
        "lr=0.001,0.002",
        "--set",
        "subset=6000",
        "--set",
        "epochs=6",
        "--slurm",
        "--profile",
        "dev",
        "--cpus-per-task",
        "1",
        "--time",
        "00:30:00",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_string_lossy().into_owned()])
    .collect()
}

#[test]
fn dry_run_writes_a_requeueable_array_and_an_evaluation_that_waits_for_it() {
    let out = tempfile::tempdir().unwrap();
    let mut args = sweep_args(out.path());
    args.push("--dry-run".into());
    let run = xtask().args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("sweep: 2 runs (1 models × 2 lr × 1 seeds), preset study"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing submitted (--dry-run)"), "{stdout}");
    let slurm = out.path().join("slurm");
    let train = std::fs::read_to_string(slurm.join("train.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-1\n",
        "#SBATCH --requeue\n",
        "#SBATCH --open-mode=append\n",
        "#SBATCH --cpus-per-task=1\n",
        "#SBATCH --time=00:30:00\n",
        "--continue --no-progress --model cnn --preset study --seed 42 --lr 0.002 --subset 6000 --epochs 6 --out ",
    ] {
        assert!(train.contains(line), "{line:?} not in\n{train}");
    }
    assert!(train.contains(&format!(
        "#SBATCH --output={}/logs/run-%a.out",
        out.path().display()
    )));
    let submit = std::fs::read_to_string(slurm.join("submit.sh")).unwrap();
    assert!(
        submit.contains("--dependency=afterany:\"$train\""),
        "{submit}"
    );
    let evaluate = std::fs::read_to_string(slurm.join("evaluate.sbatch")).unwrap();
    assert!(evaluate.contains("fmnist-eval --results "), "{evaluate}");
    for script in ["train.sbatch", "evaluate.sbatch", "submit.sh"] {
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(slurm.join(script))
            .status()
            .unwrap();
        assert!(syntax.success(), "{script} is not valid bash");
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("sweep.json")).unwrap())
            .unwrap();
    assert_eq!(plan["runs"][1]["name"], "cnn-lr-0.002/seed-42");
    // Nothing was trained.
    assert!(!out.path().join("cnn-lr-0.001").exists());
}

#[test]
fn a_width_out_of_range_or_foreign_to_a_model_is_refused_before_any_run() {
    let out = tempfile::tempdir().unwrap();
    let refused = |models: &str, set: &str| {
        let run = xtask()
            .args(["sweep", "--models", models, "--set", set])
            .args(["--profile", "dev", "--local", "1", "--out"])
            .arg(out.path().join("sweep"))
            .output()
            .unwrap();
        assert!(!run.status.success(), "{models} {set} was accepted");
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let err = refused("lstm", "hidden=0,64");
    assert!(
        err.contains("run lstm-hidden-0/seed-42: fmnist-train refuses its flags")
            && err.contains("hidden: must be at least 1"),
        "{err}"
    );
    let err = refused("lstm,cnn", "hidden=64");
    assert!(err.contains("hidden: cnn has no LSTM"), "{err}");
    let err = refused("resnet", "dense=64");
    assert!(
        err.contains("dense: resnet has no dense hidden layer"),
        "{err}"
    );
    // Nothing was written, nothing trained.
    assert!(!out.path().join("sweep").exists());
}

#[test]
fn a_flag_fmnist_train_does_not_know_is_refused_and_a_plan_alone_writes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let run = xtask()
        .args(["sweep", "--models", "cnn", "--set", "learning-rate=0.1"])
        .args(["--profile", "dev", "--local", "1", "--out"])
        .arg(out.path().join("sweep"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("run cnn/seed-42: fmnist-train refuses its flags")
            && err.contains("unexpected argument '--learning-rate'"),
        "{err}"
    );
    assert!(!out.path().join("sweep").exists());

    // Without --local or --slurm the plan is printed and nothing is written.
    let plan = xtask()
        .args([
            "sweep",
            "--models",
            "cnn",
            "--set",
            "lr=1e-3,2e-3",
            "--profile",
            "dev",
        ])
        .arg("--out")
        .arg(out.path().join("sweep"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(stdout.contains("cnn-lr-2e-3/seed-42  new"), "{stdout}");
    assert!(
        stdout.contains("xtask: nothing run: pass --local J"),
        "{stdout}"
    );
    assert!(!out.path().join("sweep").exists());
}

#[test]
fn a_local_sweep_trains_the_grid_evaluates_it_and_keeps_it_when_run_again() {
    let out = tempfile::tempdir().unwrap();
    let sweep = || {
        let run = xtask()
            .args(["sweep", "--models", "mlp", "--set", "lr=0.001,0.003"])
            .args(["--set", "subset=1000", "--set", "epochs=1", "--seeds", "2"])
            .args(["--local", "2", "--profile", "dev", "--out"])
            .arg(out.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        stdout
    };
    let first = sweep();
    assert!(
        first.contains("xtask: training 4 runs here, 2 at a time"),
        "{first}"
    );
    for (i, run) in [
        "mlp-lr-0.001/seed-42",
        "mlp-lr-0.001/seed-43",
        "mlp-lr-0.003/seed-42",
        "mlp-lr-0.003/seed-43",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            first.contains(&format!("  {run}: test accuracy ")),
            "{first}"
        );
        let log = std::fs::read_to_string(out.path().join(format!("logs/run-{i}.out"))).unwrap();
        // The cores are split between the two runs at a time.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = format!("threads: {}\n", (cores / 2).max(1));
        assert!(log.contains(&threads), "{log}");
    }
    // One row per setting, its two seeds folded into mean ± std.
    let table = &first[first.find("== every recipe").expect("the table")..];
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("study")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.contains("epochs=1 lr=0.003 subset=1000") && r.contains("42, 43")),
        "{table}"
    );
    assert!(out.path().join("REPORT.md").is_file());
    let again = sweep();
    assert!(
        again.contains("xtask: training 0 runs here") && again.contains("(4 finished already)"),
        "{again}"
    );
}

/// A one-node Slurm cluster on 127.0.0.1, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts munged (where none answers), slurmctld and slurmd; `None` where Slurm is not
    /// installed or this is not root.
    fn start() -> Option<Cluster> {
        let installed = ["slurmctld", "slurmd", "sbatch", "munged"].iter().all(|p| {
            ["/usr/sbin", "/usr/bin"]
                .iter()
                .any(|d| Path::new(d).join(p).exists())
        });
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !installed || !root {
            let why = if installed {
                "this test starts slurmd, which needs root"
            } else {
                "Slurm is not installed (apt-get install slurmctld slurmd slurm-client munge)"
            };
            assert!(std::env::var_os("CI").is_none(), "CI: {why}");
            eprintln!("skipping the Slurm cluster test: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut daemons = Vec::new();
        let munge_answers = || {
            Command::new("munge")
                .arg("-n")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !munge_answers() {
            std::fs::create_dir_all("/run/munge").unwrap();
            assert!(Command::new("chown")
                .args(["munge:munge", "/run/munge"])
                .status()
                .unwrap()
                .success());
            let log = std::fs::File::create(dir.path().join("munged.out")).unwrap();
            daemons.push(
                Command::new("setpriv")
                    .args(["--reuid", "munge", "--regid", "munge", "--init-groups"])
                    .args(["/usr/sbin/munged", "--foreground"])
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
            wait_until(Duration::from_secs(20), "munged to answer", munge_answers);
        }
        let free_port = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let d = dir.path().display();
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let conf = format!(
            "ClusterName=fmnisttest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={}\nSlurmdPort={}\n\
             SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nAuthInfo=cred_expire=5\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             ReturnToService=2\nMpiDefault=none\nKillWait=5\nMinJobAge=600\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
             PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port()
        );
        std::fs::write(dir.path().join("slurm.conf"), conf).unwrap();
        let mut cluster = Cluster { dir, daemons };
        for (daemon, args) in [("slurmctld", &["-D", "-c"][..]), ("slurmd", &["-D"][..])] {
            let log =
                std::fs::File::create(cluster.dir.path().join(format!("{daemon}.out"))).unwrap();
            let child = cluster
                .command(&format!("/usr/sbin/{daemon}"))
                .args(args)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            cluster.daemons.push(child);
            std::thread::sleep(Duration::from_millis(500));
        }
        wait_until(Duration::from_secs(60), "the node to be idle", || {
            cluster
                .command("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        Some(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("scancel").args(["--user", "root"]).status();
        std::thread::sleep(Duration::from_secs(1));
        // The daemons stop on SIGTERM, munged last (it was started first).
        for child in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs Slurm and root: .ci/run installs Slurm and runs it (cargo test -- --ignored)"]
fn a_slurm_sweep_runs_as_an_array_resumes_a_requeued_task_and_ends_in_the_report() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let mut args = sweep_args(out.path());
    args.push("--wait".into());
    let mut sweep = xtask()
        .args(&args)
        .env("SLURM_CONF", cluster.conf())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(sweep.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(sweep.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|pipe| {
        let printed = Arc::clone(&printed);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut p = printed.lock().unwrap();
                p.push_str(&line);
                p.push('\n');
            }
        })
    })
    .collect();

    // Task 0, once its first epoch is done and before its last: requeue it (what preemption
    // does). Slurm starts it again once the killed attempt's credential has expired
    // (`cred_expire`: 5 s here, 120 s by default); starting it sooner (`scontrol update
    // StartTime=now`) races slurmd, which refuses to launch a job it has just killed.
    let run0 = out.path().join("cnn-lr-0.001/seed-42");
    let limit = Duration::from_secs(900);
    wait_until(limit, "task 0's first epoch", || {
        run0.join("state.json").is_file() || run0.join("summary.json").is_file()
    });
    assert!(
        !run0.join("summary.json").is_file(),
        "task 0 finished before it could be requeued"
    );
    let first_epoch = std::fs::read_to_string(run0.join("history.csv")).unwrap();
    let task = cluster
        .output("squeue", &["-h", "-r", "-o", "%i"])
        .lines()
        .find(|l| l.ends_with("_0"))
        .expect("task 0 in the queue")
        .to_string();
    cluster.output("scontrol", &["requeue", &task]);

    let start = Instant::now();
    let status = loop {
        if let Some(status) = sweep.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = sweep.kill();
            panic!("the sweep did not end:\n{}", printed.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in readers {
        r.join().unwrap();
    }
    let printed = printed.lock().unwrap().clone();
    assert!(status.success(), "{printed}");
    assert!(printed.contains("xtask: submitted array job "), "{printed}");

    // Task 0 ran twice and the second attempt resumed the run: epoch 1 is as the first
    // attempt wrote it (its wall time too), and every epoch is there once.
    let log0 = std::fs::read_to_string(out.path().join("logs/run-0.out")).unwrap();
    assert!(
        log0.contains("restart 0)") && log0.contains("restart 1)"),
        "{log0}"
    );
    assert!(log0.contains(": resuming after epoch "), "{log0}");
    let history = std::fs::read_to_string(run0.join("history.csv")).unwrap();
    assert_eq!(history.lines().nth(1), first_epoch.lines().nth(1));
    assert_eq!(history.lines().count(), 1 + 6, "{history}");
    for run in ["cnn-lr-0.001/seed-42", "cnn-lr-0.002/seed-42"] {
        assert!(out.path().join(run).join("summary.json").is_file(), "{run}");
    }

    // The evaluation job ran after the array: the report and the per-setting table.
    let report = std::fs::read_to_string(out.path().join("REPORT.md")).unwrap();
    assert!(report.contains("lr=0.002"), "{report}");
    let evaluation = std::fs::read_to_string(out.path().join("logs/evaluate.out")).unwrap();
    assert!(
        evaluation.contains("== every recipe (mean ± sample std over seeds) =="),
        "{evaluation}"
    );
    assert!(
        printed.contains("== every recipe") && printed.contains("epochs=6 lr=0.002 subset=6000"),
        "{printed}"
    );
}
