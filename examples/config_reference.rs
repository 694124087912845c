//! Writes docs/CONFIG.md, the reference of every setting, from `Config`
//! (`make docs`); the library's `docs_config_md_is_current` test fails
//! until the committed page matches what this writes.

fn main() -> std::io::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");
    std::fs::write(path, shardcast::config::reference_markdown())?;
    println!("wrote docs/CONFIG.md");
    Ok(())
}
