//! Choosing the device: `auto` tries CUDA, then Metal, then the CPU, and says why; the
//! thread count; the machine and commit that reports and benchmarks state.
use anyhow::bail;
use candle::Device;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA if built with `--features cuda` and a GPU answers, else Metal likewise, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

/// The device for `choice`, and a line saying which was picked and why.
pub fn select_device(choice: DeviceChoice) -> anyhow::Result<(Device, String)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, "cpu (asked for)".into())),
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda needs a build with `--features cuda`");
            }
            let device = Device::new_cuda(0).map_err(|e| {
                anyhow::anyhow!(
                    "no CUDA device could be opened ({}): is an NVIDIA driver installed and the GPU visible?",
                    headline(&e)
                )
            })?;
            Ok((device, "cuda:0 (asked for)".into()))
        }
        DeviceChoice::Metal => {
            if !cfg!(feature = "metal") {
                bail!("--device metal needs a build with `--features metal`");
            }
            let device = Device::new_metal(0).map_err(|e| {
                anyhow::anyhow!("no Metal device could be opened ({})", headline(&e))
            })?;
            Ok((device, "metal:0 (asked for)".into()))
        }
        DeviceChoice::Auto => {
            let mut why = Vec::new();
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok((d, "cuda:0 (auto)".into())),
                    Err(e) => why.push(format!("cuda unavailable: {}", headline(&e))),
                }
            } else {
                why.push("built without cuda".into());
            }
            if cfg!(feature = "metal") {
                match Device::new_metal(0) {
                    Ok(d) => return Ok((d, "metal:0 (auto)".into())),
                    Err(e) => why.push(format!("metal unavailable: {}", headline(&e))),
                }
            }
            Ok((Device::Cpu, format!("cpu (auto: {})", why.join("; "))))
        }
    }
}

/// The first line of a candle error (its display carries a backtrace when RUST_BACKTRACE is set).
fn headline(e: &candle::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The environment variables that give candle (and the rayon pools it and the kernels run
/// on) `threads` CPU threads: none for `None` (candle's choice, the physical cores); 0 is
/// refused. A program sets them at the start of `main`, before any thread starts and before
/// candle first reads them (it reads them once); no library sets them.
pub fn thread_environment(threads: Option<usize>) -> anyhow::Result<Vec<(&'static str, String)>> {
    match threads {
        None => Ok(Vec::new()),
        Some(0) => bail!(
            "--threads must be at least 1 (leave it out for candle's choice, the physical cores)"
        ),
        Some(n) => Ok(vec![
            ("RAYON_NUM_THREADS", n.to_string()),
            ("CANDLE_NUM_THREADS", n.to_string()),
        ]),
    }
}

/// The thread count candle uses on the CPU.
pub fn cpu_threads() -> usize {
    candle::utils::get_num_threads()
}

/// The CPU model (from /proc/cpuinfo where there is one, with its family and model numbers,
/// which tell CPU generations apart that share a name), logical cores, OS and the vector
/// instructions the fused kernels run, e.g. "AMD EPYC (family 25, model 1), 2 cores, linux,
/// AVX2+FMA".
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpu_name(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {}, {}",
        std::env::consts::OS,
        fmnist_models::kernels::vector_instructions()
    )
}

/// "model name (family F, model M)" from the first processor of a /proc/cpuinfo text, or the
/// name alone where the numbers are missing; `None` without a model name.
fn cpu_name(cpuinfo: &str) -> Option<String> {
    let field = |key: &str| {
        cpuinfo
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name")?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    })
}

/// The short hash of the commit this binary was built from, `-dirty` if its sources differed
/// from it (`unknown` outside a git checkout).
pub fn git_commit() -> String {
    env!("FMNIST_GIT_COMMIT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_name_carries_family_and_model_of_the_first_processor() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n\
                    model name\t: Other\n";
        assert_eq!(
            cpu_name(info).as_deref(),
            Some("AMD EPYC (family 25, model 1)")
        );
        assert_eq!(
            cpu_name("model name\t: Some CPU\n").as_deref(),
            Some("Some CPU")
        );
        assert_eq!(cpu_name("processor\t: 0\n"), None);
    }

    #[test]
    fn zero_threads_is_an_error_not_a_default() {
        let e = thread_environment(Some(0)).unwrap_err().to_string();
        assert!(e.starts_with("--threads must be at least 1"), "{e}");
        assert!(thread_environment(None).unwrap().is_empty());
        assert_eq!(
            thread_environment(Some(3)).unwrap(),
            [
                ("RAYON_NUM_THREADS", "3".to_string()),
                ("CANDLE_NUM_THREADS", "3".to_string())
            ]
        );
    }
}
