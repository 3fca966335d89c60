//! The signer's dedicated thread and its supervision: every device call has a timeout; a thread whose call
//! outlives it is abandoned and the next call opens the device afresh on a new thread; errors retrying cannot
//! fix are backed off exponentially instead of being repeated at every seal (docs/RELIABILITY.md).
//!
//! What happens to an abandoned thread: it stays blocked in the device call (a blocking C call cannot be
//! cancelled from outside). If the call ever returns, its result is thrown away (a signature nobody waits for,
//! or a counter value the next attempt reads back and reuses), the device is let go of with
//! [`HeadSigner::abandon`] — for PKCS#11 `C_CloseSession` but never `C_Finalize`, which acts on the whole process
//! and would end the fresh session too — and the thread ends. At most [`MAX_STUCK_THREADS`] abandoned threads may
//! be blocked at once; beyond that no further session is opened ([`SignerError::Stuck`]).

use super::health::{next_delay, Backoff, SignerHealth, SignerSupervision, MAX_STUCK_THREADS};
use super::{HeadSigner, SignerError};
use anchorlog_core::counter::CounterObservation;
use anchorlog_core::head::HeadCounter;
use anchorlog_core::key::PublicKey;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

type Reply<T> = oneshot::Sender<Result<T, SignerError>>;
type Opener = Arc<dyn Fn() -> Result<Box<dyn HeadSigner>, SignerError> + Send + Sync>;

/// One device call, run on the signer thread in the order sent.
enum Job {
    Sign(Vec<u8>, Reply<Vec<u8>>),
    AdvanceCounter(Option<u64>, Reply<Option<HeadCounter>>),
    ReadCounter(Reply<Option<CounterObservation>>),
    Release(Reply<()>),
    Close(Reply<()>),
}

impl Job {
    /// Answers the job with `e` without touching the device.
    fn fail(self, e: SignerError) {
        let _ = match self {
            Job::Sign(_, r) => r.send(Err(e)).is_ok(),
            Job::AdvanceCounter(_, r) => r.send(Err(e)).is_ok(),
            Job::ReadCounter(r) => r.send(Err(e)).is_ok(),
            Job::Release(r) | Job::Close(r) => r.send(Err(e)).is_ok(),
        };
    }
}

/// One signer thread as the handle sees it.
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Set (before `jobs` is dropped) when the handle gave up waiting for this thread.
    abandoned: Arc<AtomicBool>,
    /// Lives as long as the thread: counts it as stuck once abandoned.
    alive: std::sync::Weak<()>,
}

struct State {
    worker: Option<Worker>,
    /// When the back-off in force lets the device be called again.
    retry_at: Option<Instant>,
    closed: bool,
}

struct Shared {
    open: Opener,
    supervision: SignerSupervision,
    health: Arc<SignerHealth>,
    spki: Vec<u8>,
    state: Mutex<State>,
}

/// Async handle to a signer that lives on its own OS thread, replaced when it hangs.
#[derive(Clone)]
pub struct SignerHandle {
    shared: Arc<Shared>,
    public_key: PublicKey,
    description: String,
}

/// Runs `job` on `signer`, answering its caller; `false` for `Close` (the thread ends).
fn run(signer: &mut Box<dyn HeadSigner>, job: Job) -> bool {
    // A caller that gave up waiting is not an error of the device: sends may fail.
    match job {
        Job::Release(reply) => {
            signer.release();
            let _ = reply.send(Ok(()));
        }
        Job::Close(reply) => {
            let _ = reply.send(Ok(()));
            return false;
        }
        Job::Sign(message, reply) => {
            let _ = reply.send(signer.sign(&message));
        }
        Job::AdvanceCounter(above, reply) => {
            let _ = reply.send(signer.advance_counter(above));
        }
        Job::ReadCounter(reply) => {
            let _ = reply.send(signer.read_counter());
        }
    }
    true
}

/// The thread's loop: opens the device at the first job if it was not given one, then runs jobs until closed.
fn serve(
    mut signer: Option<Box<dyn HeadSigner>>,
    open: Opener,
    spki: Vec<u8>,
    mut rx: mpsc::Receiver<Job>,
    abandoned: Arc<AtomicBool>,
    alive: Arc<()>,
) {
    while let Some(job) = rx.blocking_recv() {
        if let Job::Close(reply) = job {
            // The device is let go of before the caller hears back.
            drop(signer);
            let _ = reply.send(Ok(()));
            return;
        }
        let device = match signer.as_mut() {
            Some(s) => s,
            None => match open() {
                Ok(s) if s.public_key_spki_der() == spki => signer.insert(s),
                Ok(s) => {
                    job.fail(SignerError::KeyChanged(s.describe()));
                    return;
                }
                Err(e) => {
                    // The thread ends; the handle opens a new one at its next call.
                    job.fail(e);
                    return;
                }
            },
        };
        if !run(device, job) {
            return;
        }
        if abandoned.load(Ordering::SeqCst) {
            break;
        }
    }
    // The channel closed: the handle is gone or gave up on this thread.
    if abandoned.load(Ordering::SeqCst) {
        if let Some(s) = signer.take() {
            s.abandon();
        }
        tracing::warn!("an abandoned signer thread's device call returned; the thread ends");
    }
    drop(alive);
}

impl SignerHandle {
    /// Opens the signer on a new thread (so every device call, including opening, happens there) and returns
    /// once it is ready, or with the error that prevented it; supervised with the defaults.
    pub fn spawn<F>(open: F) -> Result<SignerHandle, SignerError>
    where
        F: Fn() -> Result<Box<dyn HeadSigner>, SignerError> + Send + Sync + 'static,
    {
        Self::spawn_supervised(open, SignerSupervision::default())
    }

    /// Like [`SignerHandle::spawn`], with the timeout and back-off of `supervision`. `open` is called again
    /// to replace a thread that hung or after an error retrying cannot fix, so it reads its secrets (the PIN
    /// file) each time.
    pub fn spawn_supervised<F>(open: F, supervision: SignerSupervision) -> Result<SignerHandle, SignerError>
    where
        F: Fn() -> Result<Box<dyn HeadSigner>, SignerError> + Send + Sync + 'static,
    {
        let open: Opener = Arc::new(open);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (jobs, rx) = mpsc::channel::<Job>(64);
        let abandoned = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let (o, a) = (open.clone(), abandoned.clone());
        std::thread::Builder::new()
            .name("anchorlog-signer".into())
            .spawn(move || {
                let signer = match o() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let spki = signer.public_key_spki_der();
                if ready_tx.send(Ok((spki.clone(), signer.describe()))).is_err() {
                    return;
                }
                serve(Some(signer), o, spki, rx, a, alive);
            })
            .map_err(|_| SignerError::ThreadStopped)?;
        let (spki, description) = ready_rx.recv().map_err(|_| SignerError::ThreadStopped)??;
        let public_key = PublicKey::from_spki_der(&spki)?;
        let worker = Worker { jobs, abandoned, alive: weak };
        let shared = Arc::new(Shared {
            open,
            supervision,
            health: Arc::new(SignerHealth::new(&supervision)),
            spki,
            state: Mutex::new(State { worker: Some(worker), retry_at: None, closed: false }),
        });
        Ok(SignerHandle { shared, public_key, description })
    }

    /// A new thread that opens the device at its first job.
    fn spawn_worker(&self) -> Result<Worker, SignerError> {
        let (jobs, rx) = mpsc::channel::<Job>(64);
        let abandoned = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let (o, a, spki) = (self.shared.open.clone(), abandoned.clone(), self.shared.spki.clone());
        std::thread::Builder::new()
            .name("anchorlog-signer".into())
            .spawn(move || serve(None, o, spki, rx, a, alive))
            .map_err(|_| SignerError::ThreadStopped)?;
        Ok(Worker { jobs, abandoned, alive: weak })
    }

    /// The device's health as `/readyz` and `/metrics` show it.
    pub fn health(&self) -> Arc<SignerHealth> {
        self.shared.health.clone()
    }

    /// Signs `message` on the signer thread.
    pub async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, SignerError> {
        self.call(|tx| Job::Sign(message, tx)).await
    }

    /// Reserves the counter value for the next head on the signer thread
    /// ([`HeadSigner::advance_counter`]).
    pub async fn advance_counter(&self, above: Option<u64>) -> Result<Option<HeadCounter>, SignerError> {
        self.call(|tx| Job::AdvanceCounter(above, tx)).await
    }

    /// Reads the device's counter on the signer thread ([`HeadSigner::read_counter`]).
    pub async fn read_counter(&self) -> Result<Option<CounterObservation>, SignerError> {
        self.call(Job::ReadCounter).await
    }

    /// Lets go of the device connection until the next call ([`HeadSigner::release`]).
    pub async fn release(&self) -> Result<(), SignerError> {
        self.call(Job::Release).await
    }

    /// Closes the signer: returns once the device was let go of (or the timeout passed); every clone fails from
    /// then on.
    pub async fn close(self) -> Result<(), SignerError> {
        let mut st = self.shared.state.lock().await;
        st.closed = true;
        let Some(worker) = st.worker.take() else { return Ok(()) };
        drop(st);
        self.close_worker(worker).await
    }

    /// Ends `worker` cleanly (the device is dropped normally), waiting at most the timeout.
    async fn close_worker(&self, worker: Worker) -> Result<(), SignerError> {
        let (tx, rx) = oneshot::channel();
        let closing = async {
            worker.jobs.send(Job::Close(tx)).await.map_err(|_| SignerError::ThreadStopped)?;
            rx.await.map_err(|_| SignerError::ThreadStopped)?
        };
        match tokio::time::timeout(self.shared.supervision.timeout, closing).await {
            Ok(r) => r,
            Err(_) => {
                self.abandon(worker);
                Err(self.timeout_error())
            }
        }
    }

    /// Gives up on `worker`: it ends (without finalising the device) whenever its call returns.
    fn abandon(&self, worker: Worker) {
        worker.abandoned.store(true, Ordering::SeqCst);
        self.shared.health.abandoned(worker.alive.clone());
        drop(worker);
    }

    fn timeout_error(&self) -> SignerError {
        SignerError::Timeout {
            timeout_ms: u64::try_from(self.shared.supervision.timeout.as_millis()).unwrap_or(u64::MAX),
            stuck: self.shared.health.stuck_threads(),
        }
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, SignerError> {
        let health = &self.shared.health;
        let mut st = self.shared.state.lock().await;
        if st.closed {
            return Err(SignerError::ThreadStopped);
        }
        if let (Some(at), Some(b)) = (st.retry_at, health.backoff()) {
            let now = Instant::now();
            if now < at {
                health.backed_off_calls.fetch_add(1, Ordering::Relaxed);
                let retry_in_ms = u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX);
                return Err(SignerError::BackingOff { error: b.error, retry_in_ms });
            }
        }
        let worker = match st.worker.take() {
            Some(w) if !w.jobs.is_closed() => w,
            _ => {
                let stuck = health.stuck_threads();
                if stuck >= MAX_STUCK_THREADS {
                    return Err(SignerError::Stuck { stuck });
                }
                self.spawn_worker()?
            }
        };
        let (tx, rx) = oneshot::channel();
        let job = job(tx);
        // Only a signature's answer ends a hang: the counter calls of a PKCS#11 signer never reach the device,
        // and a fresh session may log in while signing still hangs, so `/readyz` would otherwise drop and
        // re-raise `signer_hung` at every seal attempt while no head can be signed.
        let ends_hang = matches!(job, Job::Sign(..));
        let asked = async {
            worker.jobs.send(job).await.map_err(|_| SignerError::ThreadStopped)?;
            rx.await.map_err(|_| SignerError::ThreadStopped)?
        };
        match tokio::time::timeout(self.shared.supervision.timeout, asked).await {
            Ok(Ok(v)) => {
                if ends_hang {
                    health.answered();
                }
                if health.backoff().is_some() {
                    tracing::info!("the signer works again; the back-off ends");
                }
                health.set_backoff(None);
                st.retry_at = None;
                st.worker = Some(worker);
                Ok(v)
            }
            Ok(Err(e)) => {
                health.answered();
                if e.is_retryable() {
                    // Device trouble the backend reconnects from by itself; a thread that ended is reopened.
                    st.worker = Some(worker);
                    return Err(e);
                }
                // Retrying cannot fix it: the device is closed (the next attempt opens it afresh, reading the PIN
                // file again) and not touched again before the pause is over.
                if !worker.jobs.is_closed() {
                    drop(st);
                    let _ = self.close_worker(worker).await;
                    st = self.shared.state.lock().await;
                }
                let previous = health.backoff();
                let delay_ms = next_delay(previous.as_ref().map(|b| b.delay_ms), &self.shared.supervision);
                let b = Backoff {
                    error: e.to_string(),
                    delay_ms,
                    failures: previous.as_ref().map_or(0, |b| b.failures) + 1,
                    since_ms: previous.map_or_else(crate::store::now_ms, |b| b.since_ms),
                };
                health.unrecoverable_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, failures = b.failures, next_attempt_in_ms = delay_ms,
                    "signer error that retrying cannot fix: the device is not called again before the pause is over");
                health.set_backoff(Some(b));
                st.retry_at = Some(Instant::now() + std::time::Duration::from_millis(delay_ms));
                Err(e)
            }
            Err(_) => {
                self.abandon(worker);
                health.timed_out(crate::store::now_ms());
                let e = self.timeout_error();
                tracing::error!(error = %e, "signer call timed out; its thread is abandoned");
                Err(e)
            }
        }
    }

    /// The signer's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Description of the device and key.
    pub fn description(&self) -> &str {
        &self.description
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// What the fault double does at its next call.
    #[derive(Default)]
    struct Faults {
        hang: AtomicBool,
        unrecoverable: AtomicBool,
        opens: AtomicU64,
        calls: AtomicU64,
        abandoned: AtomicU64,
    }

    /// Fault double (fault injection only): an in-memory P-256 key that hangs or fails on demand.
    struct Double {
        key: SigningKey,
        faults: Arc<Faults>,
    }

    impl HeadSigner for Double {
        fn public_key_spki_der(&self) -> Vec<u8> {
            self.key.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec()
        }
        fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
            self.faults.calls.fetch_add(1, Ordering::SeqCst);
            while self.faults.hang.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.faults.unrecoverable.load(Ordering::SeqCst) {
                return Err(SignerError::InjectedUnrecoverable("CKR_PIN_INCORRECT".into()));
            }
            let sig: DerSignature = self.key.sign(message);
            Ok(sig.as_bytes().to_vec())
        }
        fn describe(&self) -> String {
            "double".into()
        }
        fn abandon(self: Box<Self>) {
            self.faults.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn handle(faults: &Arc<Faults>, supervision: SignerSupervision) -> SignerHandle {
        let f = faults.clone();
        SignerHandle::spawn_supervised(
            move || {
                f.opens.fetch_add(1, Ordering::SeqCst);
                Ok(Box::new(Double { key: SigningKey::from_slice(&[7; 32]).unwrap(), faults: f.clone() })
                    as Box<dyn HeadSigner>)
            },
            supervision,
        )
        .unwrap()
    }

    fn supervision(timeout_ms: u64, initial_ms: u64, max_ms: u64) -> SignerSupervision {
        SignerSupervision {
            timeout: Duration::from_millis(timeout_ms),
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_millis(max_ms),
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The sealer asks for the counter before every signature; with PKCS#11 that call never reaches the device. It
    /// must not end the hang `/readyz` reports while signing still times out (it did: `signer_hung` flickered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_signature_ends_a_hang_not_a_counter_call_that_never_reached_the_device() {
        let faults = Arc::new(Faults::default());
        let h = handle(&faults, supervision(200, 1000, 4000));
        faults.hang.store(true, Ordering::SeqCst);
        assert!(matches!(h.sign(b"a".to_vec()).await, Err(SignerError::Timeout { .. })));
        let health = h.health();
        let since = health.hung_since_ms.load(Ordering::SeqCst);
        assert!(since > 0);
        // A fresh thread opens and answers the counter call (no counter: `None`) although signing still hangs.
        assert_eq!(h.advance_counter(None).await.unwrap(), None);
        assert_eq!(
            health.hung_since_ms.load(Ordering::SeqCst),
            since,
            "the hang is still on, since the same time"
        );
        faults.hang.store(false, Ordering::SeqCst);
        assert!(h.public_key().verify(b"b", &h.sign(b"b".to_vec()).await.unwrap()));
        assert_eq!(health.hung_since_ms.load(Ordering::SeqCst), 0, "a signature ends it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_call_times_out_its_thread_is_abandoned_and_a_fresh_one_signs() {
        let faults = Arc::new(Faults::default());
        let h = handle(&faults, supervision(300, 1000, 4000));
        assert!(h.public_key().verify(b"a", &h.sign(b"a".to_vec()).await.unwrap()));
        faults.hang.store(true, Ordering::SeqCst);
        let e = h.sign(b"b".to_vec()).await.unwrap_err();
        assert!(matches!(e, SignerError::Timeout { timeout_ms: 300, stuck: 1 }), "{e}");
        assert!(e.is_retryable());
        let health = h.health();
        assert_eq!((health.timeouts.load(Ordering::SeqCst), health.stuck_threads()), (1, 1));
        assert!(health.hung_since_ms.load(Ordering::SeqCst) > 0);
        // Still hanging: the fresh thread opens the device and hangs in it too, and is abandoned as well.
        let e = h.sign(b"c".to_vec()).await.unwrap_err();
        assert!(matches!(e, SignerError::Timeout { stuck: 2, .. }), "{e}");
        assert_eq!(faults.opens.load(Ordering::SeqCst), 2, "one fresh open per abandoned thread");
        // The device answers again: the abandoned threads let go of it (abandon, never a normal drop) and end.
        faults.hang.store(false, Ordering::SeqCst);
        until("the abandoned threads to end", || health.stuck_threads() == 0).await;
        assert_eq!(faults.abandoned.load(Ordering::SeqCst), 2);
        let sig = h.sign(b"d".to_vec()).await.unwrap();
        assert!(h.public_key().verify(b"d", &sig));
        assert_eq!(faults.opens.load(Ordering::SeqCst), 3);
        assert_eq!(health.hung_since_ms.load(Ordering::SeqCst), 0, "not hung once a call answered");
        h.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_max_stuck_threads_are_opened_into_a_device_that_hangs_them_all() {
        let faults = Arc::new(Faults::default());
        let h = handle(&faults, supervision(100, 1000, 4000));
        faults.hang.store(true, Ordering::SeqCst);
        for n in 1..=MAX_STUCK_THREADS {
            let e = h.sign(b"x".to_vec()).await.unwrap_err();
            assert!(matches!(e, SignerError::Timeout { stuck, .. } if stuck == n), "{e}");
        }
        let e = h.sign(b"x".to_vec()).await.unwrap_err();
        assert!(matches!(e, SignerError::Stuck { stuck: MAX_STUCK_THREADS }), "{e}");
        assert_eq!(
            faults.opens.load(Ordering::SeqCst),
            MAX_STUCK_THREADS as u64,
            "the first plus replacements"
        );
        faults.hang.store(false, Ordering::SeqCst);
        let health = h.health();
        until("the stuck threads to end", || health.stuck_threads() == 0).await;
        h.sign(b"y".to_vec()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_retrying_cannot_fix_are_backed_off_exponentially_and_the_device_is_reopened_after() {
        let faults = Arc::new(Faults::default());
        let h = handle(&faults, supervision(5000, 100, 400));
        h.sign(b"a".to_vec()).await.unwrap();
        faults.unrecoverable.store(true, Ordering::SeqCst);
        let before = faults.calls.load(Ordering::SeqCst);
        // The sealer's pace: an attempt every 10 ms for 2 s (200 attempts).
        let started = std::time::Instant::now();
        let mut refused = 0;
        while started.elapsed() < Duration::from_secs(2) {
            if let Err(SignerError::BackingOff { .. }) = h.sign(b"x".to_vec()).await {
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let device_calls = faults.calls.load(Ordering::SeqCst) - before;
        // Pauses 100, 200, 400, 400, … ms: at most 1 + 2 s / 100 ms-ish calls even at the fastest; in practice 6-7.
        assert!((3..=8).contains(&device_calls), "{device_calls} device calls in 2 s");
        assert!(refused > 100, "{refused} attempts refused without touching the device");
        let health = h.health();
        let b = health.backoff().unwrap();
        assert_eq!((b.delay_ms, b.failures), (400, device_calls));
        assert_eq!(b.error, "injected unrecoverable fault: CKR_PIN_INCORRECT");
        assert_eq!(health.unrecoverable_errors.load(Ordering::SeqCst), device_calls);
        // Each unrecoverable error closed the device: every further attempt opened it afresh.
        assert_eq!(faults.opens.load(Ordering::SeqCst), device_calls);
        // Fixed: the attempt after the pause succeeds and ends the back-off.
        faults.unrecoverable.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(450)).await;
        h.sign(b"z".to_vec()).await.unwrap();
        assert!(health.backoff().is_none());
    }
}
