//! `market-template-sandbox`: renders a client's chat template for the node, in a process of
//! its own with memory and CPU limits (see `market_node::template_sandbox`). The node starts
//! it (or itself, in the same role) when it cannot serve as its own sandbox, as a test binary
//! cannot; it is not meant to be run by hand.

fn main() {
    market_node::template_sandbox::serve_as_child_if_asked();
    eprintln!(
        "market-template-sandbox: started by the node ({} first), not by hand",
        market_node::template_sandbox::CHILD_ARG
    );
    std::process::exit(2);
}
