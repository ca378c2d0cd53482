//! CertPoll (GetCertInitial, RFC 8894 §3.3.3) and GetCert (§3.3.4): the result of a pending
//! request, and a certificate by issuer and serial.

use super::{refuse, FailInfo, ReplyTo, ScepError};
use crate::cms::signed;
use crate::context::Context;

/// Answers a cert_poll request.
pub(crate) fn cert_poll(
    ctx: &Context,
    to: &ReplyTo,
    _message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    // TODO: being written now (issue 3); refused in the client's own terms until then.
    refuse(
        ctx,
        to,
        FailInfo::BadRequest,
        "cert_poll: not supported yet",
        remote,
    )
}

/// Answers a get_cert request.
pub(crate) fn get_cert(
    ctx: &Context,
    to: &ReplyTo,
    _message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    // TODO: being written now (issue 3); refused in the client's own terms until then.
    refuse(
        ctx,
        to,
        FailInfo::BadRequest,
        "get_cert: not supported yet",
        remote,
    )
}
