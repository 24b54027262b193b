"""The command-line tools around the service: each `wavebridge <command>` is one module here (`cli.COMMANDS`).

Commands
    cli            the `wavebridge` entry point; dispatches to each tool's `cli(argv)`
    demo           `wavebridge demo`: embedded broker + worker + replay, Parquet files and a PNG
    replay         `wavebridge replay`: recordings onto Kafka as live bedside monitors
    offline        `wavebridge translate`: the pipeline without Kafka, recording -> Parquet
    embedded       `wavebridge broker`: the embedded Kafka-protocol broker (Tansu)
    alarm_check    `wavebridge alarm-check`: one Challenge record's alarm verdict
    train          `wavebridge train`: trains the CLMT model
    evaluate       `wavebridge evaluate`: CLMT vs. classic translators on held-out patients
    bench_model    `wavebridge bench-model`: model inference throughput and latency

Building blocks the tools (and the tests and benchmarks) share
    chunker        the pure chunker: a recording as the wire chunks a monitor would send
    resampling     a recording as a monitor sampling some signals at another rate
    publisher      paced publishing of those chunks to Kafka (`ReplayOptions`, `replay`)
    worker_process the stream worker as a child process, its environment from `Settings.to_env`
    collector      reads a run's input and output topics back (the demo)
    tables         chunks and events as Arrow tables / Parquet files (the demo)
    demo_plot      the demo's picture

Submodules are not imported here: `wavebridge --help` must not pay for torch or Kafka clients.
"""
