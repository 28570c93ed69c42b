# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tests' Berkeley DB application: an inventory after the parts/locations example of the Berkeley DB
Getting Started guide (../shared/seeds/003). Real transactional environments through the PyPI berkeleydb binding.

    bdb_inventory.py create HOME [LOG_MAX [DATA_DIR LOG_DIR]]
                                            make the environment (parts.db, locations.db, history.db); DATA_DIR and
                                            LOG_DIR (default data and logs) may be absolute: outside the home
    bdb_inventory.py write HOME STATE [N]   the writer: transactions until killed (or the Nth); pauses while STATE/paused exists
    bdb_inventory.py pause STATE [S [B]]    pre command: (after B seconds) ask the writer to pause, wait until it has
                                            (then S seconds)
    bdb_inventory.py resume STATE           post command: let it go on (succeeds when it already runs)
    bdb_inventory.py check HOME             print JSON: per part its total and the sum over its locations, last txn
    bdb_inventory.py fill HOME MIB          add bulk.db, about MIB MiB of incompressible 1000-byte records written in
                                            transactions, then checkpoint and remove the logs no longer needed (a
                                            large environment whose logs are not larger than it)
    bdb_inventory.py drop-when HOME STATE NAME DIR PART
                                            make database NAME (committed), then remove it (DB_ENV->dbremove in a
                                            transaction) as soon as DIR holds a file whose name contains PART (the
                                            copy's partial file included); STATE/dropped says when

Each transaction adds a quantity to one part in parts.db (its total) and to one of its locations in locations.db,
in one transaction, so a part's total always equals the sum over its locations; parts.db's key ~seq holds the
number of the last committed transaction, and STATE/committed the writer's last acknowledged commit.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from berkeleydb import db

PARTS = 20
LOCATIONS = 4
FLAGS = db.DB_CREATE | db.DB_INIT_TXN | db.DB_INIT_LOG | db.DB_INIT_LOCK | db.DB_INIT_MPOOL


def open_env(home, recover=False):
    env = db.DBEnv()
    env.open(home, FLAGS | (db.DB_RECOVER if recover else 0))
    return env


def open_db(env, name, pagesize=None, dbtype=db.DB_BTREE):
    handle = db.DB(env)
    if pagesize:
        handle.set_pagesize(pagesize)
    txn = env.txn_begin()
    handle.open(name, dbtype=dbtype, flags=db.DB_CREATE, txn=txn)
    txn.commit()
    return handle


def create(home, log_max=65536, data_dir="data", log_dir="logs"):
    os.makedirs(home, exist_ok=True)
    os.makedirs(os.path.join(home, data_dir), exist_ok=True)
    os.makedirs(os.path.join(home, log_dir), exist_ok=True)
    with open(os.path.join(home, "DB_CONFIG"), "w", encoding="utf-8") as handle:
        handle.write("set_data_dir %s\nset_lg_dir %s\nset_lg_max %d\n" % (data_dir, log_dir, log_max))
    env = open_env(home, recover=True)
    # history.db is written once, then never opened again: after the old logs are archived, db_archive -s does not
    # list it, but a backup must still hold it.
    history = open_db(env, "history.db", 4096, db.DB_HASH)
    txn = env.txn_begin()
    history.put(b"created", str(time.time()).encode(), txn=txn)
    txn.commit()
    history.close()
    parts, locations = open_db(env, "parts.db", 4096), open_db(env, "locations.db", 8192)
    txn = env.txn_begin()
    for part in range(PARTS):
        parts.put(b"p%03d" % part, b"0", txn=txn)
        for location in range(LOCATIONS):
            locations.put(b"p%03d:l%d" % (part, location), b"0", txn=txn)
    parts.put(b"~seq", b"0", txn=txn)
    txn.commit()
    # enough log records to pass history.db's creation, then the logs that mention it are removed
    for _round in range(3):
        env.txn_checkpoint(0, 0, db.DB_FORCE)
        txn = env.txn_begin()
        for part in range(PARTS):
            parts.put(b"pad%03d" % part, os.urandom(2000), txn=txn)
        txn.commit()
    env.txn_checkpoint(0, 0, db.DB_FORCE)
    for name in env.log_archive(db.DB_ARCH_ABS):
        os.unlink(name)
    parts.close()
    locations.close()
    env.close()


def write(home, state, count=0, seed=1):
    rng = random.Random(seed)
    env = open_env(home)
    parts, locations = open_db(env, "parts.db"), open_db(env, "locations.db")
    committed = open(os.path.join(state, "committed"), "a", encoding="utf-8")
    paused_flag, paused_ack = os.path.join(state, "paused"), os.path.join(state, "writer-paused")
    seq = int(parts.get(b"~seq"))
    while not count or seq < count:
        if os.path.exists(paused_flag):
            if not os.path.exists(paused_ack):
                open(paused_ack, "w", encoding="utf-8").close()
            time.sleep(0.01)
            continue
        if os.path.exists(paused_ack):
            os.unlink(paused_ack)
        part, location, quantity = rng.randrange(PARTS), rng.randrange(LOCATIONS), rng.randrange(1, 10)
        txn = env.txn_begin()
        key, where = b"p%03d" % part, b"p%03d:l%d" % (part, location)
        parts.put(key, b"%d" % (int(parts.get(key, txn=txn, flags=db.DB_RMW)) + quantity), txn=txn)
        locations.put(where, b"%d" % (int(locations.get(where, txn=txn, flags=db.DB_RMW)) + quantity), txn=txn)
        parts.put(b"~seq", b"%d" % (seq + 1), txn=txn)
        txn.commit()
        seq += 1
        committed.write("%d\n" % seq)
        committed.flush()
        time.sleep(0.001)  # a steady writer, not a benchmark: the machine is shared with the playbook under test
    parts.close()
    locations.close()
    env.close()


def pause(state, linger=0, before=0, timeout=30.0):
    # A slow quiesce before the pause: an application that first waits for its long transactions to end.
    time.sleep(before)
    open(os.path.join(state, "paused"), "w", encoding="utf-8").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(state, "writer-paused")):
        if time.monotonic() > deadline:
            sys.exit("the writer did not pause within %d s" % timeout)
        time.sleep(0.01)
    with open(os.path.join(state, "calls.log"), "a", encoding="utf-8") as log:
        log.write("pause\n")
    time.sleep(linger)  # a slow quiesce: the tests kill the controller while the writers are paused


def resume(state):
    try:
        os.unlink(os.path.join(state, "paused"))
    except FileNotFoundError:
        pass
    with open(os.path.join(state, "calls.log"), "a", encoding="utf-8") as log:
        log.write("resume\n")


def drop_when(home, state, name, directory, part, timeout=300.0):
    """An application that removes one of its databases while a hot backup copies the others: the database is made
    and committed first (so the backup's checkpoint lists it), the removal waits for the copy to start writing a file
    whose name contains ``part`` into ``directory``."""
    env = open_env(home)
    handle = open_db(env, name, 4096)
    txn = env.txn_begin()
    for number in range(500):
        handle.put(b"%06d" % number, os.urandom(200), txn=txn)
    txn.commit()
    handle.close()
    open(os.path.join(state, "drop-ready"), "w", encoding="utf-8").close()
    deadline = time.monotonic() + timeout
    seen = []
    while not seen:
        if time.monotonic() > deadline:
            sys.exit("no file named *%s* in %s within %d s" % (part, directory, timeout))
        time.sleep(0.002)
        seen = [entry for entry in (os.listdir(directory) if os.path.isdir(directory) else []) if part in entry]
    txn = env.txn_begin()
    env.dbremove(name, txn=txn)
    txn.commit()
    with open(os.path.join(state, "dropped"), "w", encoding="utf-8") as marker:
        marker.write("%s removed when %s appeared\n" % (name, seen[0]))
    env.close()


def fill(home, mib):
    env = open_env(home)
    env.set_flags(db.DB_TXN_NOSYNC, 1)  # a load, not the writer under test: one flush per checkpoint is enough
    bulk = open_db(env, "bulk.db", 8192)
    payload = os.urandom(1 << 20)
    rng = random.Random(5)
    records = mib * (1 << 20) // 1000
    for start in range(0, records, 2000):
        txn = env.txn_begin()
        for number in range(start, min(records, start + 2000)):
            offset = rng.randrange(0, len(payload) - 1000)
            bulk.put(b"%010d" % number, payload[offset:offset + 1000], txn=txn)
        txn.commit()
        if start % 20000 == 0:
            env.txn_checkpoint(0, 0, db.DB_FORCE)
            for name in env.log_archive(db.DB_ARCH_ABS):
                os.unlink(name)
    bulk.close()
    env.txn_checkpoint(0, 0, db.DB_FORCE)
    for name in env.log_archive(db.DB_ARCH_ABS):
        os.unlink(name)
    env.close()


def check(home):
    env = open_env(home)
    parts, locations = open_db(env, "parts.db"), open_db(env, "locations.db")
    result = {"parts": {}, "seq": int(parts.get(b"~seq"))}
    for part in range(PARTS):
        key = b"p%03d" % part
        total = int(parts.get(key))
        spread = sum(int(locations.get(b"%s:l%d" % (key, location))) for location in range(LOCATIONS))
        result["parts"][key.decode()] = [total, spread]
    parts.close()
    locations.close()
    env.close()
    print(json.dumps(result))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "create":
        create(sys.argv[2], *([int(sys.argv[3])] + sys.argv[4:6] if len(sys.argv) > 3 else []))
    elif command == "write":
        write(sys.argv[2], sys.argv[3], *(int(arg) for arg in sys.argv[4:]))
    elif command == "pause":
        pause(sys.argv[2], *(float(arg) for arg in sys.argv[3:]))
    elif command == "resume":
        resume(sys.argv[2])
    elif command == "check":
        check(sys.argv[2])
    elif command == "fill":
        fill(sys.argv[2], int(sys.argv[3]))
    elif command == "drop-when":
        drop_when(*sys.argv[2:7])
    else:
        sys.exit("unknown command %s" % command)
