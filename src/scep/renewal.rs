//! RenewalReq (RFC 8894 §3.3.1.2): a new certificate for a key pair that already holds one of
//! ours, signed with that certificate.

use super::{refuse, FailInfo, ReplyTo, ScepError};
use crate::cms::signed;
use crate::context::Context;

/// Answers a renewal_req request.
pub(crate) fn renewal_req(
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
        "renewal_req: not supported yet",
        remote,
    )
}
