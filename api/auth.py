"""The coaching API's bearer tokens: loaded from a file at start, checked on every request.

The tokens file (`api_tokens_file`, env `CDC_API_TOKENS_FILE`) holds one token per line;
blank lines and lines starting with `#` are ignored. Without a readable file holding at
least one token the API refuses to start. Every route but `/healthz` depends on
`require_token`: a missing or wrong `Authorization: Bearer <token>` is a 401 with
`WWW-Authenticate: Bearer`, the same answer for both. Only SHA-256 digests of the tokens are
kept; a presented token is hashed and compared with every digest by `hmac.compare_digest`
(equal lengths, no early exit), so neither the matching token nor a token's length shows in
the timing. Tokens are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cdc.errors import CdcError, ErrorKind
from cdc.ops.logs import get_logger

TOKENS_ENV: Final = "CDC_API_TOKENS_FILE"
UNAUTHORIZED: Final = "missing or invalid bearer token: send Authorization: Bearer <token>"
CHALLENGE: Final = {"WWW-Authenticate": "Bearer"}
_HOW: Final = (
    "one token per line (blank lines and lines starting with # are ignored); "
    "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, repr=False)
class ApiTokens:
    """The accepted tokens, as SHA-256 digests only."""

    digests: tuple[bytes, ...]

    @classmethod
    def of(cls, tokens: list[str]) -> ApiTokens:
        return cls(tuple(_digest(token) for token in tokens))

    def accepts(self, presented: str) -> bool:
        """Whether `presented` is one of the tokens; every token is compared, always."""
        candidate = _digest(presented)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(digest, candidate)
        return matched

    def __repr__(self) -> str:
        return f"ApiTokens({len(self.digests)} tokens)"


def parse_tokens(text: str) -> list[str]:
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def load_tokens(path: Path | None) -> ApiTokens:
    """The tokens in `path`; a `CdcError` (CONFIG) saying what to do when there are none."""
    if path is None:
        raise CdcError(
            ErrorKind.CONFIG,
            f"the coaching API needs bearer tokens: set {TOKENS_ENV} (the api_tokens_file "
            f"setting) to the path of a file with {_HOW}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CdcError(
            ErrorKind.CONFIG,
            f"{TOKENS_ENV}: cannot read {path} ({exc.strerror or type(exc).__name__}); "
            f"point it at a readable file with {_HOW}",
        ) from exc
    except UnicodeDecodeError:
        # The decoder's message would quote a byte of the file: say only what is wrong.
        raise CdcError(
            ErrorKind.CONFIG, f"{TOKENS_ENV}: {path} is not UTF-8 text; write into it {_HOW}"
        ) from None
    tokens = parse_tokens(text)
    if not tokens:
        raise CdcError(
            ErrorKind.CONFIG, f"{TOKENS_ENV}: {path} holds no token; write into it {_HOW}"
        )
    return ApiTokens.of(tokens)


bearer = HTTPBearer(
    auto_error=False,
    description=f"A token from the API's tokens file ({TOKENS_ENV}), one per line.",
)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Let the request through with a right bearer token; otherwise 401."""
    tokens = request.app.state.tokens
    if not isinstance(tokens, ApiTokens):
        raise RuntimeError("the app has not started: no API tokens")
    if credentials is not None and tokens.accepts(credentials.credentials):
        return
    get_logger(component="api").warning(
        "api_unauthorized",
        method=request.method,
        path=request.url.path,
        reason="no bearer token" if credentials is None else "wrong bearer token",
    )
    raise HTTPException(HTTPStatus.UNAUTHORIZED, detail=UNAUTHORIZED, headers=CHALLENGE)
