//! SoftHSM2 token directories and tokens, made one way for every test.
//!
//! Two kinds of user: processes the test starts (the appliance, a witness, `pkcs11-tool`), which get their own
//! directory through `SOFTHSM2_CONF` in their environment ([`TokenDir`]); and tests that load the PKCS#11 module
//! in their own process, where `SOFTHSM2_CONF` is process-global and read once at `C_Initialize`
//! ([`process_token_dir`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// Debian's SoftHSM module.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Test-only user PIN (throw-away tokens in a temp dir).
pub const USER_PIN: &str = "test-user-pin";
/// Test-only security officer PIN.
pub const SO_PIN: &str = "test-so-pin";

/// A token directory and the `softhsm2.conf` naming it, inside a directory the caller owns.
pub struct TokenDir {
    /// The `softhsm2.conf` to pass as `SOFTHSM2_CONF`.
    pub conf: PathBuf,
}

impl TokenDir {
    /// Creates `DIR/tokens` and `DIR/softhsm2.conf` (file object store, errors only in the log).
    pub fn create(dir: &Path) -> TokenDir {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        TokenDir { conf }
    }

    /// Initialises a token `label` in a free slot with `softhsm2-util` (keys are made by `anchorlog keys generate`
    /// or `anchorlog witness keygen` afterwards).
    pub fn init_token(&self, label: &str, user_pin: &str, so_pin: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", user_pin, "--so-pin", so_pin])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("softhsm2-util runs (apt-get install softhsm2)");
        assert!(out.status.success(), "init token {label}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// This process's own token directory, created and put in `SOFTHSM2_CONF` on first use, for tests that load the
/// PKCS#11 module themselves. Call it before the first PKCS#11 call of the process: SoftHSM reads the variable at
/// `C_Initialize`. Own, not shared: SoftHSM answers CKR_GENERAL_ERROR while another process creates a token in
/// the same directory (seen under nextest, which runs every test in a process of its own). It lives under the
/// build's `target/tmp/softhsm-tokens/PID` and outlives the process (other threads may still use the module at
/// exit); the next process to make one removes it.
pub fn process_token_dir() -> &'static TokenDir {
    static DIR: OnceLock<TokenDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("softhsm-tokens");
        std::fs::create_dir_all(&parent).expect("token dir");
        // Directories are named after their process: those of processes that are gone are removed here, since no
        // process can remove its own at exit. An old one under this process's (reused) pid is stale too.
        for entry in std::fs::read_dir(&parent).expect("token dirs").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let gone = name
                .parse::<u32>()
                .is_ok_and(|pid| pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(std::process::id().to_string());
        let tokens = TokenDir::create(&dir);
        std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
        tokens
    })
}

/// A token label unique within this process (pid and a counter: unique across processes too).
pub fn unique_label(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// `s` as the PIN type the PKCS#11 API takes.
pub fn pin(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.to_owned())
}

/// For tests that load the PKCS#11 module in their own process: points the process at [`process_token_dir`] and
/// holds the module for the caller until the guard drops. `C_Initialize`/`C_Finalize` act on the whole process
/// and the signer API loads and finalises the module itself (src/signer/pkcs11.rs, "Process-global state"), so
/// two such tests must not overlap when a runner puts them in one process (`cargo test`; nextest runs each in
/// its own).
pub fn module_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons it; the next test may still run.
    let guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    process_token_dir();
    guard
}
