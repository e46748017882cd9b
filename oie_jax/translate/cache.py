"""Every LLM answer, kept in SQLite under a key of (backend, model, prompt, sampling), with whether the
token budget cut it; the model names the weights too when they can be known (`served`: a local model's
fingerprint, an endpoint's /models `root`). A run that is killed and started again asks nothing twice.
Each answer is committed when it arrives; failures are never stored, so the next run asks again."""

import hashlib
import json
import sqlite3
import time

from oie_jax.errors import UserError
from oie_jax.translate.backends import Answer


def answer_key(backend: str, model: str, prompt: str, sampling: dict) -> str:
    payload = json.dumps([backend, model, prompt, sampling], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, path):
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)  # autocommit: one answer, one commit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                             "prompt TEXT, sampling TEXT, answer TEXT, created REAL, truncated INTEGER DEFAULT 0)")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
            if "truncated" not in columns:  # a cache of an earlier version: its answers count as whole
                self._db.execute("ALTER TABLE answers ADD COLUMN truncated INTEGER DEFAULT 0")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"not a usable answer cache ({exc})", path) from None

    def get(self, key: str) -> Answer | None:
        row = self._db.execute("SELECT answer, truncated FROM answers WHERE key = ?", (key,)).fetchone()
        return Answer(row[0], bool(row[1])) if row else None

    def put(self, key: str, backend: str, model: str, prompt: str, sampling: dict, answer: Answer) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, backend, model, prompt, sampling, answer, created, "
                         "truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (key, backend, model, prompt, json.dumps(sampling, sort_keys=True), answer.text, time.time(),
                          int(answer.truncated)))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
