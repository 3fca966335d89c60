//! Test-only fault doubles on a live PKCS#11 signer (feature `fault-injection`, which no release build turns on:
//! see `src/fault.rs`). The token tests in `softhsm-tests/pkcs11.rs` run outside this crate and use these to do
//! to a signer what a token reset, a pulled token or an operator replacing the key does, without reaching into
//! private state.

use super::{
    device, key_templates, rv_means_session_lost, Module, Pkcs11Error, Pkcs11Settings, Pkcs11Signer,
};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use zeroize::Zeroizing;

/// What one `C_Sign` on the signer's current session returned (see [`Pkcs11Signer::fault_sign_digest_once`]).
#[derive(Debug)]
pub enum RawSign {
    /// The token signed: its raw `r‖s`.
    Signed(Vec<u8>),
    /// The token answered with a return value that means the session (or its login) is gone: the value's name.
    SessionLost(String),
    /// Any other failure.
    Failed(String),
}

impl Pkcs11Signer {
    /// Logs the signer's session out, as a token reset or a closed keeper session does; the next
    /// [`Pkcs11Signer::sign`] must log in again.
    pub fn fault_log_out(&self) -> Result<(), Pkcs11Error> {
        let c = self.connection.as_ref().expect("the signer has a session");
        c.session.logout().map_err(|e| device("C_Logout", e))
    }

    /// Forgets the signer's session, as if opening it again had failed; the next [`Pkcs11Signer::sign`] must open
    /// one.
    pub fn fault_drop_session(&mut self) {
        self.connection = None;
    }

    /// Destroys both halves of the key pair under the signer's key label through the signer's own session: the
    /// key replaced behind the signer's back (generate a new one afterwards).
    pub fn fault_destroy_key(&self) -> Result<(), Pkcs11Error> {
        let c = self.connection.as_ref().expect("the signer has a session");
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let template =
                [Attribute::Class(class), Attribute::Label(self.settings.key_label.as_bytes().to_vec())];
            for handle in c.session.find_objects(&template).map_err(|e| device("C_FindObjects", e))? {
                c.session.destroy_object(handle).map_err(|e| device("C_DestroyObject", e))?;
            }
        }
        Ok(())
    }

    /// One `C_Sign` of a SHA-256 `digest` on the current session, without the reconnect
    /// [`Pkcs11Signer::sign`] does: proves that a session really is lost, and times the token alone.
    pub fn fault_sign_digest_once(&mut self, digest: &[u8]) -> RawSign {
        match self.sign_digest(digest) {
            Ok(raw) => RawSign::Signed(raw),
            Err(CkError::Pkcs11(rv, _)) if rv_means_session_lost(rv) => {
                RawSign::SessionLost(super::ckr_name(rv))
            }
            Err(e) => RawSign::Failed(e.to_string()),
        }
    }
}

/// Generates a P-384 key pair (which the appliance must refuse) labelled `settings.key_label` in the token
/// `settings.token_label`, otherwise like [`super::generate_key`].
pub fn generate_p384_key(settings: &Pkcs11Settings, pin: &Zeroizing<String>) -> Result<(), Pkcs11Error> {
    let module = Module::load(&settings.module)?;
    let slot = module.find_slot(&settings.token_label)?;
    let session = module.user_session(slot, pin)?;
    // secp384r1 = 1.3.132.0.34
    let p384 = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let (mut public, private) = key_templates(&settings.key_label, &[7]);
    public[3] = Attribute::EcParams(p384);
    session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| device("C_GenerateKeyPair", e))?;
    Ok(())
}
