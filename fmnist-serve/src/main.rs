//! `fmnist-serve`: loads a trained run and its similarity index of the training images once,
//! then serves them over HTTP until Ctrl-C (the routes are in the library's documentation).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use fmnist_data::DataArgs;
use fmnist_models::photo::Invert;
use fmnist_models::similar::SimilarityIndex;
use fmnist_models::Classifier;
use fmnist_serve::{App, ServeOptions};
use fmnist_train::{best_run, select_device, DeviceChoice};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves a trained classifier over HTTP: POST /classify (an image, or a form of several)
/// and POST /similar (the nearest training images), a page to try it at /, GET /health and
/// GET /metrics. Prints `listening on http://ADDR` once it accepts requests.
#[derive(Parser, Debug)]
#[command(name = "fmnist-serve", version)]
struct Cli {
    /// Run whose best checkpoint classifies. Default: the run under --results with the best
    /// validation accuracy.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Folder holding the runs, searched when --run is not given.
    #[arg(long, value_name = "DIR", default_value = "results")]
    results: PathBuf,
    /// Address to listen on (port 0: a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Largest request body in bytes; a larger one is refused (413) while it arrives.
    #[arg(long, default_value_t = 10 * 1024 * 1024, value_name = "BYTES")]
    max_body: usize,
    /// Seconds to receive a request's body before answering 408.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    read_timeout: f64,
    /// Classes per prediction (a request can ask for others with ?top=N).
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// `needs_review` below this top probability (a request can set ?threshold=P).
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Flip photos so the item is light on dark, like the training data.
    #[arg(long, value_enum, default_value_t)]
    invert: Invert,
    /// Device to classify on.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceChoice,
    /// CPU threads, at least 1 (default: candle's choice, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

fn main() -> ExitCode {
    fmnist_train::memory::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        cli.read_timeout > 0.0 && cli.read_timeout.is_finite(),
        "--read-timeout must be a positive number of seconds"
    );
    // Before any thread starts: candle reads its thread count once.
    for (key, value) in fmnist_train::device::thread_environment(cli.threads)? {
        std::env::set_var(key, value);
    }
    let (device, _) = select_device(cli.device)?;
    let data = cli.data.load()?;
    let dir = match &cli.run {
        Some(d) => d.clone(),
        None => best_run(&cli.results)?,
    };
    let classifier = Classifier::load(&dir, &device)?;
    eprintln!("model: {} ({})", dir.display(), classifier.model().kind());
    let (index, how) = SimilarityIndex::load_or_build(&dir, &classifier, &data.train)?;
    eprintln!("similarity index: {how}");
    let app = Arc::new(App::new(
        classifier,
        index,
        data.train,
        dir.display().to_string(),
        fmnist_train::device::machine_description(),
        ServeOptions {
            max_body: cli.max_body,
            read_timeout: std::time::Duration::from_secs_f64(cli.read_timeout),
            top: cli.top,
            threshold: cli.threshold,
            invert: cli.invert,
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(fmnist_serve::serve(app, cli.addr, |addr| {
        println!("listening on http://{addr}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }))
}
