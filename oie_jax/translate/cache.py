"""Every LLM answer, kept in SQLite under a key of (backend, model, prompt, sampling): a run that is
killed and started again asks nothing twice. Each answer is committed when it arrives; failures are
never stored, so the next run asks again."""

import hashlib
import json
import sqlite3
import time

from oie_jax.errors import UserError


def answer_key(backend: str, model: str, prompt: str, sampling: dict) -> str:
    payload = json.dumps([backend, model, prompt, sampling], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, path):
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)  # autocommit: one answer, one commit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                             "prompt TEXT, sampling TEXT, answer TEXT, created REAL)")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"not a usable answer cache ({exc})", path) from None

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, backend: str, model: str, prompt: str, sampling: dict, answer: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (key, backend, model, prompt, json.dumps(sampling, sort_keys=True), answer, time.time()))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
