//! The init of a swarmup lab node, started by the lab provider inside the node's fresh
//! namespaces. `swarmup` runs the same code through a hidden subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmup-lab-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(swarmup_providers::lab::node::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmup-lab-node: {e}");
            ExitCode::FAILURE
        }
    }
}
