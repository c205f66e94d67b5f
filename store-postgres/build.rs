//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds
//! them, and without this cargo would not notice a new file.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
