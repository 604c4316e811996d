//! `colony-env`: the environments' helper processes (init, and programs
//! run inside an environment), apart from the large colony binary so that
//! starting them is cheap. Run by the grid node, never by hand; see
//! `cpu::env::helper`.

fn main() {
    cpu::env::helper::close_inherited_descriptors();
    cpu::env::helper::run_if_asked();
    eprintln!("colony-env is run by the grid node with arguments it supplies");
    std::process::exit(2)
}
