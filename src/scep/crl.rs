//! GetCRL (RFC 8894 §3.3.4): the CA's current CRL.

use super::{refuse, FailInfo, ReplyTo, ScepError};
use crate::cms::signed;
use crate::context::Context;

/// Answers a get_crl request.
pub(crate) fn get_crl(
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
        "get_crl: not supported yet",
        remote,
    )
}
