/*
 * parking.pml -- the park protocol of docs/parking.md (one client's blocking
 * queue, the state log, epochs, `done`, pause/resume operations), checked
 * exhaustively with SPIN: `make model`.  model/README.md maps every part to
 * the protocol.
 *
 *   Broker   one client queue with items 1..NI; single active consumer with
 *            prefetch 1: only the head is delivered, only to the active
 *            consumer; a closed channel returns the held head, redelivered.
 *   Log      the state stream log[0..loglen).  A record is first "in flight"
 *            (fly[]) and lands later, in ANY order with the others in
 *            flight: late records.  A view is the fold of a prefix,
 *            fold(k) = View.apply over log[0..k).  Replica r's view offset
 *            applied[r] only grows and lags: each read of the view picks any
 *            offset between applied[r] and loglen.  sync() reads the whole
 *            log as it is at that moment (the marker landed at once).
 *   Head(r)  replica r's parking module for the client: the delivery steps
 *            (claim, read up to now, done / ran-it-myself / parked, gone,
 *            paused, run), park, retry, skip, resume, unpark-before-ack.
 *   Op(r)    replica r's pause/resume operations: check-and-set records with
 *            an op id; the side effects only by the writer whose record won.
 *   Admin    not a process: a retry/skip reaches the holder of the parked
 *            item, a pause/resume reaches either replica's Op (two replicas
 *            that both believe they lead), each made when it arrives -- the
 *            same as sent earlier (stale, reordered) and delivered now;
 *            duplicates (a double click) up to the budget, and a message that
 *            a killed replica was handling is delivered again.
 *   Env      deliveries, landings, and the faults: channel loss, kill -9
 *            (with restart and replay), both bounded by counters.
 *   Settle   when nothing can move any more: everything has settled.
 *
 * Variants (compile-time flags; `make model` runs each):
 *   (none)        docs/parking.md with FIX 1-5 below: must pass.  (FIX 1-4
 *                 are in docs/parking.md now; their DOC_ variants keep the
 *                 wording this model started from, as regression tests.)
 *   DOC_CLAIM     claim as written (always epoch += 1): must FAIL.  A late
 *                 claim of a replica that lost the item bumps the epoch
 *                 under the current holder; its park/unpark is then ignored.
 *                 FIX 1: a claim names the epoch its writer saw and the fold
 *                 applies it only if that is still the epoch (check-and-set);
 *                 a writer whose claim lost claims again.
 *   DOC_STEP2     the old step 2 (before the claim): must FAIL.  Local
 *                 memory of a success acks an item that another replica ran
 *                 again since and parked.  FIX 3: "ran it myself" only after
 *                 the claim, and only while the log parks no item.
 *   DOC_STEP4     step 4 believes a lagging view: must FAIL (a stale park of
 *                 the previous item looks "gone").  FIX 4: sync first (a
 *                 first delivery on a newly placed consumer, or while the
 *                 view names a park or an open claim, reads the log first).
 *   DOC_MINE      step 3 as docs/parking.md reads now: "ran it myself, its
 *                 ack was lost, the log parks no item" -> ack unrun, which
 *                 leaves its claim open: must FAIL -- the next item finds
 *                 an open claim of another item and parks the client on it
 *                 as "gone".  FIX 5: unpark how=done first, as after a
 *                 claimed item's run, then ack.
 *   DOC_OPS       pause/resume applied whenever "not paused"/"paused" holds:
 *                 must FAIL (run with MAXOPS > 0).  A duplicate of an op applies
 *                 again after the opposite op.  FIX 2: the fold applies an op
 *                 id at most once.
 *   BROKEN_SKIP   skip believes the recorded park (the view) instead of the
 *                 held head and its phase: must FAIL (INV3).
 *   BROKEN_FENCE  the fold ignores epochs: must FAIL (INV4).
 *
 * Invariants (each assert starts with the name, e.g. assert(INV4 && ...),
 * so that pan's report names it):
 *   INV1  an item that succeeded and was acked never runs again
 *   INV2  order: item N+1 never starts before N succeeded or was skipped;
 *         a parked item never runs again except by retry
 *   INV3  retry/skip act only on the held head item, only when parked
 *   INV4  a park survives: while the fold parks item i (no unpark accepted),
 *         item i is in the queue -- never acked or dropped
 *   INV5  two replicas never run the client's head at once
 *   GONE  no item is declared gone (left the queue unfinished): nothing
 *         leaves the queue here but by an ack, so "gone" is always false
 *   OPS   one side effect per op id (only the winner of the CAS acts)
 *   SETTLE when nothing can move, all is settled (Settle process)
 *   BOUND  the model's own capacities (log, in flight, epoch) suffice
 *
 * Bounds (NI, MAXLOSS, ...) are variables read from the environment at the
 * start (PML_NI, ...), so one compiled verifier checks several bound sets;
 * model/run.sh has the sets.
 */

#define NONE 2          /* "no replica" */
#define LOGMAX 20       /* records the log can hold (asserted) */
#define NF 6            /* records in flight at once (asserted) */
#define NOWAIT 255

/* ---- bounds ----
   Defaults; model/run.sh sets them per run from the environment
   (PML_NI, PML_MAXLOSS, ...), so that one compiled verifier checks several
   bound sets.  They never change during a run. */
byte NI = 2;            /* items 1..NI in the client queue (1 to 3) */
byte MAXLOSS = 2;       /* channel losses */
byte MAXCRASH = 1;      /* kill -9 */
byte MAXFAIL = 2;       /* failed runs (item 1's first run is one) */
byte MAXADM = 2;        /* retry/skip messages (duplicates included) */
byte MAXOPS = 0;        /* pause/resume messages (duplicates included) */
byte FIRSTFAIL = 1;     /* item 1's first run fails */

/* ---- records --------------------------------------------------------
 * A record is a short: kind | item<<3 | epoch<<5 | who<<8 | task<<9 |
 * x<<10 | orphan<<12.  epoch: for claim the epoch its writer saw, for
 * park/unpark the epoch it was written under.  x: the op id of pause (1)
 * and resume (2); how of unpark (1 retry, 2 skip).  who/task (0 the head,
 * 1 the op task) only route the confirm to the waiting writer; orphan is
 * set in flight when the writer was cancelled or killed.
 */
#define CLAIM  1
#define PARK   2
#define UNPARK 3
#define PAUSE  4
#define RESUME 5

#define MK(k,i,e,w,t,x) ((k) + (i)*8 + (e)*32 + (w)*256 + (t)*512 + (x)*1024)
#define KIND(r)  ((r) & 7)
#define ITEM(r)  (((r) >> 3) & 3)
#define EP(r)    (((r) >> 5) & 7)
#define WHO(r)   (((r) >> 8) & 1)
#define TASK(r)  (((r) >> 9) & 1)
#define XX(r)    (((r) >> 10) & 3)
#define ORPHAN   4096
#define WHOBIT   256
#define KEEP     (7 + 3*8 + 7*32 + 3*1024)   /* what the log keeps */

/* ---- the state log ---- */
short log[LOGMAX];
byte loglen;
short fly[NF];          /* in flight: a multiset, kept sorted, zeros last */

/* the fold of the whole log (derived; for guards and invariants) */
bit tparked; byte tpitem; bit tpaused;
byte everparked;        /* items the fold ever parked (bitmask, ghost) */

/* ---- the broker: one client queue ---- */
byte head = 1;          /* lowest item not acked; NI+1: empty */
byte holder = NONE;     /* replica holding the head, unacked */
bit hrd;                /* the head was returned: its next delivery is redelivered */
byte actv = NONE;       /* the single active consumer */
bit sub[2];             /* replica's consumer registered (channel open) */
#define ACKED(i) ((i) < head)

/* ---- replica head tasks ---- */
#define DOWN     0      /* killed, not restarted yet */
#define DISC     1      /* channel lost, not reopened yet */
#define IDLE     2      /* consuming, nothing held */
#define GOT      3      /* a delivery arrived */
#define CLAIMW   4      /* claim written, waiting to read it back */
#define RUNNING  5      /* the handler runs */
#define PARKW    6      /* park written, waiting for its confirm */
#define PARKED   7      /* holding the parked item */
#define PAUSED   8      /* holding, paused */
#define UNPW     9      /* unpark written, waiting for its confirm, then ack */
#define ACKW     10     /* ran successfully, about to ack */
#define ARCH     11     /* skip: publishing to the archive */

byte pc[2];
byte held[2];           /* item held (0: none) */
bit rd[2];              /* the held delivery is redelivered */
byte ep[2];             /* epoch the held item is held under */
byte ldone[2];          /* step 2 memory: items this process ran successfully */
byte applied[2];        /* view offset */
byte woff[2];           /* where the awaited record landed (NOWAIT: not yet) */
bit isretry[2];         /* the run in progress is a retry */
bit mustfail[2];        /* the run in progress is item 1's first: it fails */
bit fresh[2];           /* its consumer was just placed: no delivery yet */

/* ---- replica op tasks (pause/resume) ---- */
#define OIDLE 0
#define OWAIT 1
#define OACK  2
byte opc[2];
byte oop[2];            /* op handled: 1 pause, 2 resume */

/* ---- control messages (a bag: counts) ---- */
byte cop[3];            /* [1] pause (op 1), [2] resume (op 2) */

/* ---- fault and behaviour budgets ---- */
byte nloss, ncrash, nfail, nadm, nops;

/* ---- ghosts for the invariants ---- */
/* constant 1: `assert(INV4 && ...)` names the invariant in pan's report */
bit INV1 = 1, INV2 = 1, INV3 = 1, INV4 = 1, INV5 = 1, GONE = 1, OPS = 1, SETTLE = 1, BOUND = 1;
bit succ[4];         /* a run of item i succeeded */
bit skipped[4];      /* item i was skipped */
bit gpark[4];        /* a holder parked item i (announced), no retry/skip since */
bit everrun[4];
byte nrun;              /* runs of the head in progress */
byte sidefx[3];         /* side effects done per op id */

/* Temporaries.  Not `hidden`: pan does not restore hidden variables when it
   backtracks inside an atomic sequence, so a branch taken after a choice
   would read garbage.  Every step ends with done(), which zeroes them, so
   they never tell two states apart. */
byte v_epoch, v_pitem, v_done, v_ops, h_i, v_claim;
bit v_parked, v_paused, v_ok, h_sw, v_gone;
/* the last claimed item if it never finished (no unpark of it): open */
#define OPENCLAIM ((v_claim != 0 && (v_done & (1 << v_claim)) == 0) -> v_claim : 0)
short h_r, h_t, h_x;     /* h_x: the record landing (fold() uses h_r) */

/* ---- the fold: View.apply over log[0..K) ---- */
#ifdef BROKEN_FENCE
#define FENCE_OK(r) 1
#else
#define FENCE_OK(r) (EP(r) == v_epoch)
#endif
#ifdef DOC_OPS
#define OPNEW(r) 1
#else
/* FIX 2: an op id applies at most once (the fold remembers the ops it
   applied), on top of the state precondition */
#define OPNEW(r) ((v_ops & (1 << XX(r))) == 0)
#endif

inline fold(K) {
  d_step {
    v_epoch = 0; v_parked = 0; v_pitem = 0; v_done = 0; v_paused = 0;
    v_ops = 0; v_ok = 0; h_i = 0; v_claim = 0; v_gone = 0;
    do
    :: h_i < K ->
       h_r = log[h_i]; v_ok = 0;
       if
       :: KIND(h_r) == CLAIM ->
#ifdef DOC_CLAIM
          v_ok = 1;
#else
          /* FIX 1: check-and-set on the epoch the writer saw */
          v_ok = (EP(h_r) == v_epoch);
#endif
          if
          :: v_ok ->
             v_epoch++;
             assert(BOUND && (v_epoch < 8));
             /* the claim before, if it never finished (no unpark) */
             h_t = OPENCLAIM;
             v_claim = ITEM(h_r);
             if
             :: v_parked && v_pitem == ITEM(h_r) ->
                skip    /* adopted: the fence compares with the epoch, nothing to keep */
             :: !v_parked && h_t != 0 && h_t != ITEM(h_r) ->
                /* another item is claimed while the last one never finished:
                   "that one left the queue": the client is parked on it, gone */
                v_parked = 1; v_pitem = h_t; v_gone = 1
             :: else -> skip
             fi
          :: else -> skip
          fi
       :: KIND(h_r) == PARK ->
          if
          :: FENCE_OK(h_r) -> v_parked = 1; v_pitem = ITEM(h_r); v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == UNPARK ->
          /* how = retry, skip, or done (a claimed item's run succeeded) */
          if
          :: FENCE_OK(h_r) && (!v_parked || v_pitem == ITEM(h_r)) ->
             v_parked = 0; v_done = v_done | (1 << ITEM(h_r)); v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == PAUSE ->
          if
          :: !v_paused && OPNEW(h_r) ->
             v_paused = 1; v_ops = v_ops | (1 << XX(h_r)); v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == RESUME ->
          if
          :: v_paused && OPNEW(h_r) ->
             v_paused = 0; v_ops = v_ops | (1 << XX(h_r)); v_ok = 1
          :: else -> skip
          fi
       :: else -> assert(false)
       fi;
       h_i++
    :: else -> break
    od
  }
}

/* a view read: any offset between the last one and the end (views lag) */
inline readview(r) {
  do
  :: applied[r] < loglen -> applied[r]++
  :: break
  od;
  fold(applied[r])
}
/* a view read that includes offset m-1 (its own record, read back) */
inline readview_from(r, m) {
  if
  :: applied[r] < m -> applied[r] = m
  :: else -> skip
  fi;
  readview(r)
}
/* sync(): a marker appended now and read back: the whole log */
inline sync(r) {
  applied[r] = loglen;
  fold(applied[r])
}

/* ---- in flight ---- */
inline canon() {
  d_step {
    h_i = 1;
    do
    :: h_i < NF ->
       if
       :: fly[h_i - 1] < fly[h_i] ->
          h_t = fly[h_i - 1]; fly[h_i - 1] = fly[h_i]; fly[h_i] = h_t; h_i = 1
       :: else -> h_i++
       fi
    :: else -> break
    od
  }
}
inline send(rec) {
  assert(BOUND && (fly[NF-1] == 0));       /* room in flight */
  fly[NF-1] = rec;
  canon()
}
/* the writer is cancelled or killed: nobody waits for these any more */
inline orphan(r, task) {
  d_step {
    h_i = 0;
    do
    :: h_i < NF ->
       if
       :: fly[h_i] != 0 && WHO(fly[h_i]) == r && TASK(fly[h_i]) == task ->
          fly[h_i] = fly[h_i] | ORPHAN
       :: else -> skip
       fi;
       h_i++
    :: else -> break
    od
  }
}

/* trail printing (spin -t) */
inline prec(x) {
  /* one printf per record: `pan -r` prints the trail's output line by line */
  if
  :: KIND(x) == CLAIM  -> printf("@ log[%d] = claim item %d (saw epoch %d) by r%d (late %d)\n", loglen, ITEM(x), EP(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == PARK   -> printf("@ log[%d] = park item %d epoch %d by r%d (late %d)\n", loglen, ITEM(x), EP(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == UNPARK -> printf("@ log[%d] = unpark item %d epoch %d (how %d) by r%d (late %d)\n", loglen, ITEM(x), EP(x), XX(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == PAUSE  -> printf("@ log[%d] = pause op %d by r%d (late %d)\n", loglen, XX(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == RESUME -> printf("@ log[%d] = resume op %d by r%d (late %d)\n", loglen, XX(x), WHO(x), (x & ORPHAN) != 0)
  :: else -> skip
  fi
}

/* the broker takes fly[j] into the stream */
inline land(j) {
  assert(BOUND && (loglen < LOGMAX));
  h_x = fly[j]; fly[j] = 0;
  prec(h_x);
  log[loglen] = h_x & KEEP;
  if
  :: KIND(h_x) == UNPARK -> log[loglen] = h_x & (7 + 3*8 + 7*32)  /* "how" is not folded */
  :: else -> skip
  fi;
  loglen++;
  canon();
  fold(loglen);
  tparked = v_parked; tpitem = (v_parked -> v_pitem : 0); tpaused = v_paused;
  everparked = everparked | (1 << tpitem);
  /* INV4: while the fold parks item i, item i was never acked */
  assert(INV4 && (!(tparked && ACKED(tpitem))));
  /* GONE: nothing here leaves the queue unfinished (no dead-lettering, no
     purge), so the fold must never declare an item gone */
  assert(GONE && (!v_gone));
  if
  :: (h_x & ORPHAN) == 0 && TASK(h_x) == 0 -> woff[WHO(h_x)] = loglen - 1
  :: (h_x & ORPHAN) == 0 && TASK(h_x) == 1 ->
     /* the op task reads its own record back (it is the last one): the
        side effects only if it won, once per op id */
     if
     :: v_ok ->
        printf("@ r%d: its op %d record won: event and answer\n", WHO(h_x), oop[WHO(h_x)]);
        sidefx[oop[WHO(h_x)]]++;
        /* OPS: one side effect per op id */
        assert(OPS && (sidefx[oop[WHO(h_x)]] <= 1))
     :: else -> printf("@ r%d: its op %d record did not apply: answers ok=false\n", WHO(h_x), oop[WHO(h_x)])
     fi;
     opc[WHO(h_x)] = OACK
  :: else -> skip
  fi
}

/* ---- symmetry: the two replicas are interchangeable ----
   All replica state is global and every process is back at its loop head
   after each step, so swapping the replicas' data is a symmetry; keep the
   smaller of the two orders (NOSYM turns this off). */
#define KEY1(r) (pc[r]*512 + fresh[r]*256 + held[r]*64 + rd[r]*32 + isretry[r]*16 + mustfail[r]*8 + sub[r]*4 + opc[r])
#define KEY2(r) (ep[r]*4096 + ldone[r]*256 + applied[r]*8 + oop[r])
#define KEY3(r) (woff[r])
#define SWAP(a) h_t = a[0]; a[0] = a[1]; a[1] = h_t
inline symm() {
#ifndef NOSYM
  d_step {
    h_sw = (KEY1(0) > KEY1(1) ||
            (KEY1(0) == KEY1(1) && (KEY2(0) > KEY2(1) ||
              (KEY2(0) == KEY2(1) && KEY3(0) > KEY3(1)))));
    if
    :: h_sw ->
       SWAP(pc); SWAP(held); SWAP(rd); SWAP(ep); SWAP(ldone); SWAP(applied);
       SWAP(woff); SWAP(isretry); SWAP(mustfail); SWAP(opc); SWAP(oop);
       SWAP(sub); SWAP(fresh);
       holder = (holder == NONE -> NONE : 1 - holder);
       actv = (actv == NONE -> NONE : 1 - actv);
       h_i = 0;
       do
       :: h_i < NF ->
          if
          :: fly[h_i] != 0 -> fly[h_i] = fly[h_i] ^ WHOBIT
          :: else -> skip
          fi;
          h_i++
       :: else -> break
       od
    :: else -> skip
    fi
  };
  if
  :: h_sw -> canon()
  :: else -> skip
  fi
#else
  skip
#endif
}

/* every step ends here */
inline done() {
  symm();
  /* plain statements, not a d_step: a d_step that ends an atomic lets the
     simulator (spin -t) run on into the next step, so trails would not replay */
  v_epoch = 0; v_pitem = 0; v_done = 0; v_ops = 0; h_i = 0; v_claim = 0;
  v_parked = 0; v_paused = 0; v_ok = 0; h_sw = 0; h_r = 0; h_t = 0; h_x = 0; v_gone = 0
}

/* ---- the head ---- */
inline ack(r) {
  assert(holder == r && held[r] == head && head <= NI);
  printf("@ r%d acks item %d\n", r, head);
  head++; holder = NONE; hrd = 0;
  held[r] = 0; pc[r] = IDLE; isretry[r] = 0; rd[r] = 0; ep[r] = 0;
  /* INV4: an ack never removes the item the fold parks */
  assert(INV4 && (!(tparked && ACKED(tpitem))))
}

inline runstart(r, retryflag) {
  /* INV1: an item that succeeded and was acked never runs again */
  assert(INV1 && (!ACKED(held[r])));
  /* INV5: two replicas never run the client's head at once */
  assert(INV5 && (nrun == 0));
  /* INV2 (order): item N+1 never starts before N succeeded or was skipped */
  assert(INV2 && (held[r] < 2 || succ[held[r]-1] || skipped[held[r]-1]));
  assert(INV2 && (held[r] < 3 || succ[held[r]-2] || skipped[held[r]-2]));
  /* INV2 (park): a parked item never runs again except by retry */
  assert(INV2 && (retryflag || !gpark[held[r]]));
  mustfail[r] = (FIRSTFAIL && held[r] == 1 && !everrun[1]);
  everrun[held[r]] = 1;
  if
  :: retryflag -> gpark[held[r]] = 0
  :: else -> skip
  fi;
  printf("@ r%d runs item %d (retry %d)\n", r, held[r], retryflag);
  nrun++; isretry[r] = retryflag; pc[r] = RUNNING
}

/* steps 4-6, on the view just read */
#define OTHER(r) ((v_parked && v_pitem != held[r]) || (OPENCLAIM != 0 && OPENCLAIM != held[r]))
inline decide(r) {
  if
  :: OTHER(r) ->
#ifndef DOC_STEP4
     /* FIX 4: a park or an open claim of another item: sync first, the
        view may be behind */
     sync(r);
#endif
     /* GONE: step 4 would hold the client parked on the other item as
        "gone"; no item leaves the queue unfinished here, so it must never
        come to that */
     assert(GONE && (!OTHER(r)))
  :: else -> skip
  fi;
  if
  :: v_parked && v_pitem == held[r] ->
     assert(rd[r]);             /* a first delivery is never the parked item */
     pc[r] = PARKED; gpark[held[r]] = 1;
     printf("@ r%d holds item %d parked, unrun\n", r, held[r])
  :: else ->
     if
     :: v_paused ->                                        /* step 5 */
        pc[r] = PAUSED; printf("@ r%d holds item %d paused\n", r, held[r])
     :: else -> runstart(r, 0)                             /* step 6 */
     fi
  fi
}

/* INV3: retry/skip act only on the held head item, only when parked */
inline inv3(r, i) {
  assert(INV3 && (pc[r] == PARKED && held[r] == i && holder == r && head == i))
}

proctype Head(byte r) {
end:
  do
  /* a delivery */
  :: atomic { pc[r] == GOT ->
       if
#ifdef DOC_STEP2
       /* step 2 as written: this process ran it successfully: ack */
       :: (ldone[r] & (1 << held[r])) != 0 ->
          printf("@ r%d ran item %d before: acks it unrun\n", r, held[r]);
          ack(r)
#endif
       :: else ->
          readview(r);
          if
          :: rd[r] ->                                      /* step 3 */
             printf("@ r%d got item %d redelivered, sends claim (its view: epoch %d)\n", r, held[r], v_epoch);
             send(MK(CLAIM, held[r], v_epoch, r, 0, 0));
             woff[r] = NOWAIT; pc[r] = CLAIMW
          :: else ->
             printf("@ r%d got item %d (first delivery)\n", r, held[r]);
#ifndef DOC_STEP4
             /* a first delivery on a newly placed consumer, or while the
                view names a park or an open claim: read the log up to now */
             if
             :: fresh[r] || v_parked || OPENCLAIM != 0 -> sync(r)
             :: else -> skip
             fi;
#endif
             decide(r)
          fi
       fi;
       fresh[r] = 0;
       done() }
  /* the claim has landed: read it back; the view decides */
  :: atomic { pc[r] == CLAIMW && woff[r] != NOWAIT ->
       fold(woff[r] + 1);
#ifndef DOC_CLAIM
       if
       :: !v_ok ->
          /* FIX 1: another claim came first: claim again, on the newer view */
          readview_from(r, woff[r] + 1);
          printf("@ r%d: its claim lost; claims again (its view: epoch %d)\n", r, v_epoch);
          send(MK(CLAIM, held[r], v_epoch, r, 0, 0));
          woff[r] = NOWAIT
       :: else ->
#endif
          readview_from(r, woff[r] + 1);
          woff[r] = NOWAIT;
          ep[r] = v_epoch;
          printf("@ r%d reads its claim back: epoch %d, parked %d (item %d), done %d\n", r, v_epoch, v_parked, v_pitem, v_done);
          if
          :: (v_done & (1 << held[r])) != 0 ->
             printf("@ r%d: item %d is done: acks it unrun\n", r, held[r]);
             ack(r)
#ifndef DOC_STEP2
          /* FIX 3: "ran it myself" after the claim, and only while the log
             parks no item */
          :: (v_done & (1 << held[r])) == 0 && !v_parked && (ldone[r] & (1 << held[r])) != 0 ->
#ifdef DOC_MINE
             /* as docs/parking.md step 3 reads: ack unrun (its claim stays open) */
             printf("@ r%d ran item %d before: acks it unrun\n", r, held[r]);
             ack(r)
#else
             /* FIX 5: close the claim first, as after a claimed item's run:
                unpark how=done, then ack */
             printf("@ r%d ran item %d before: sends unpark item %d epoch %d (done), then acks\n", r, held[r], held[r], ep[r]);
             send(MK(UNPARK, held[r], ep[r], r, 0, 3));
             woff[r] = NOWAIT; pc[r] = UNPW
#endif
#endif
          :: else -> decide(r)
          fi
#ifndef DOC_CLAIM
       fi
#endif
       ;
       done() }
  /* the handler returns */
  :: atomic { pc[r] == RUNNING ->
       nrun--;
       if
       :: mustfail[r] || nfail < MAXFAIL ->
          nfail++;
          printf("@ r%d: item %d fails\n", r, held[r]);
          if
          :: isretry[r] ->
             /* a retry parks again under the epoch it holds the park under,
                as its unpark would: no sync (issue 17) */
             printf("@ r%d sends park item %d under its held epoch %d\n", r, held[r], ep[r])
          :: else ->
             /* sync(), then park with the current epoch */
             sync(r);
             ep[r] = v_epoch;
             printf("@ r%d syncs, sends park item %d epoch %d\n", r, held[r], ep[r])
          fi;
          send(MK(PARK, held[r], ep[r], r, 0, 0));
          woff[r] = NOWAIT; pc[r] = PARKW
       :: !mustfail[r] ->
          succ[held[r]] = 1;
          printf("@ r%d: item %d succeeds\n", r, held[r]);
          ldone[r] = ldone[r] | (1 << held[r]);
          if
          :: isretry[r] || rd[r] ->
             /* a retry, or a claimed item's run: unpark (fenced; how=retry
                or how=done, which closes the claim), then ack */
             printf("@ r%d sends unpark item %d epoch %d (how %d)\n", r, held[r], ep[r], (isretry[r] -> 1 : 3));
             send(MK(UNPARK, held[r], ep[r], r, 0, (isretry[r] -> 1 : 3)));
             woff[r] = NOWAIT; pc[r] = UNPW
          :: else -> pc[r] = ACKW
          fi
       fi;
       mustfail[r] = 0; isretry[r] = 0;
       done() }
  :: atomic { pc[r] == PARKW && woff[r] != NOWAIT ->
       woff[r] = NOWAIT; pc[r] = PARKED; gpark[held[r]] = 1;
       printf("@ r%d: park confirmed; holds item %d parked (announced)\n", r, held[r]);
       done() }
  :: atomic { pc[r] == UNPW && woff[r] != NOWAIT -> woff[r] = NOWAIT; ack(r); done() }
  :: atomic { pc[r] == ACKW -> ack(r); done() }
  /* paused: a resume record, read in the view, starts the run */
  :: atomic { pc[r] == PAUSED && applied[r] < loglen ->
       applied[r]++;
       readview(r);
       if
       :: !v_paused -> runstart(r, 0)
       :: else -> skip
       fi;
       done() }
  /* The admin's retry/skip reaches the replica that holds the parked item
     (any other forwards it there).  Messages are made when they arrive: the
     same as sent earlier and delivered now.  One that the holder refuses
     (not parked on the named item, or a retry already running) changes
     nothing, so it is not modelled. */
  /* retry: only the holder, only parked on the named item */
  :: atomic { pc[r] == PARKED && nadm < MAXADM ->
       nadm++;
       printf("@ admin: retry item %d, reaches r%d\n", held[r], r);
       inv3(r, held[r]);
       runstart(r, 1);
       done() }
#ifndef BROKEN_SKIP
  /* skip: archive (confirmed), unpark how=skip, then ack */
  :: atomic { pc[r] == PARKED && nadm < MAXADM ->
       nadm++;
       printf("@ admin: skip item %d, reaches r%d\n", held[r], r);
       inv3(r, held[r]);
       skipped[held[r]] = 1; gpark[held[r]] = 0;
       printf("@ r%d skips item %d: publishes it to the archive\n", r, held[r]);
       pc[r] = ARCH;
       done() }
#else
  /* BROKEN_SKIP: a skip naming an item the console showed parked; the
     holder believes its view of the park instead of the held head and its
     phase */
  :: atomic { holder == r && nadm < MAXADM && everparked > 1 ->
       nadm++;
       if
       :: (everparked & 2) != 0 -> h_i = 1
       :: (everparked & 4) != 0 -> h_i = 2
       :: (everparked & 8) != 0 -> h_i = 3
       fi;
       printf("@ admin: skip item %d, reaches r%d (phase %d)\n", h_i, r, pc[r]);
       h_t = h_i;
       readview(r);
       if
       :: v_parked && v_pitem == h_t ->
          printf("@ r%d: its view parks item %d: skips it\n", r, h_t);
          inv3(r, h_t);
          skipped[h_t] = 1; gpark[h_t] = 0; pc[r] = ARCH
       :: else -> skip
       fi;
       done() }
#endif
  :: atomic { pc[r] == ARCH ->
       printf("@ r%d: archived (confirmed); sends unpark item %d epoch %d (skip)\n", r, held[r], ep[r]);
       send(MK(UNPARK, held[r], ep[r], r, 0, 2));
       woff[r] = NOWAIT; pc[r] = UNPW;
       done() }
  od
}

/* pause/resume: check-and-set records with an op id; the side effects (the
   event, the answer) only after a sync() shows its own record applied */
proctype Op(byte r) {
end:
  do
  /* a new pause or resume from the admin (made when taken: the same as
     sent earlier and delivered now; either replica may take it) */
  :: atomic { opc[r] == OIDLE && nops < MAXOPS ->
       nops++;
       if
       :: oop[r] = 1; printf("@ admin: pause (op 1), handled by r%d\n", r)
       :: oop[r] = 2; printf("@ admin: resume (op 2), handled by r%d\n", r)
       fi;
       /* (one send after the if: two copies of a d_step in one step make
          spin 6.5.2 generate a duplicate C label) */
       send(MK(PAUSE + (oop[r] - 1), 0, 0, r, 1, oop[r]));
       opc[r] = OWAIT;
       done() }
  /* a control message handed back by a killed replica, delivered again */
  :: atomic { opc[r] == OIDLE && cop[1] > 0 ->
       cop[1]--; oop[r] = 1;
       printf("@ r%d handles a redelivered pause (op 1)\n", r);
       send(MK(PAUSE, 0, 0, r, 1, 1)); opc[r] = OWAIT;
       done() }
  :: atomic { opc[r] == OIDLE && cop[2] > 0 ->
       cop[2]--; oop[r] = 2;
       printf("@ r%d handles a redelivered resume (op 2)\n", r);
       send(MK(RESUME, 0, 0, r, 1, 2)); opc[r] = OWAIT;
       done() }
  /* (OWAIT -> OACK happens where its record lands: see land()) */
  /* the control message is acked */
  :: atomic { opc[r] == OACK -> oop[r] = 0; opc[r] = OIDLE; done() }
  od
}

/* ---- faults ---- */
inline subscribe(r) {
  sub[r] = 1; fresh[r] = 1;
  if
  :: actv == NONE -> actv = r
  :: else -> skip
  fi
}
/* the channel closes: the held head goes back to the head, redelivered; the
   run is cancelled (it writes nothing more; what it sent may still land);
   the replica learns it before the broker delivers the item elsewhere */
inline chanloss(r) {
  if
  :: holder == r -> holder = NONE; hrd = 1
  :: else -> skip
  fi;
  if
  :: pc[r] == RUNNING -> nrun--
  :: else -> skip
  fi;
  orphan(r, 0);
  pc[r] = DISC; held[r] = 0; rd[r] = 0; ep[r] = 0; isretry[r] = 0;
  mustfail[r] = 0; woff[r] = NOWAIT; sub[r] = 0;
  if
  :: actv == r -> actv = (sub[1 - r] -> 1 - r : NONE)
  :: else -> skip
  fi
}
/* kill -9: all local state is lost; a control message being handled goes
   back to the control queue (it is delivered again: a duplicate) */
inline crash(r) {
  chanloss(r);
  orphan(r, 1);
  pc[r] = DOWN; ldone[r] = 0; applied[r] = 0;
  if
  :: opc[r] == OWAIT || opc[r] == OACK -> cop[oop[r]]++
  :: else -> skip
  fi;
  opc[r] = OIDLE; oop[r] = 0
}

#define LAND(j) :: atomic { fly[j] != 0 -> land(j); done() }

proctype Env() {
end:
  do
  /* the broker delivers the head to the active consumer */
  :: atomic { holder == NONE && head <= NI && actv != NONE && pc[actv] == IDLE ->
       printf("@ broker delivers item %d to r%d (redelivered %d)\n", head, actv, hrd);
       holder = actv; held[actv] = head; rd[actv] = hrd; pc[actv] = GOT;
       done() }
  /* a record lands: any of those in flight */
  LAND(0) LAND(1) LAND(2) LAND(3) LAND(4) LAND(5)
  /* faults, where they matter: a channel loss or a kill of the replica that
     holds the head, or a kill of one handling an operation (an idle
     replica's loss or kill only moves the single active consumer) */
  :: atomic { nloss < MAXLOSS && holder == 0 -> nloss++;
       printf("@ FAULT: r0 loses its channel\n"); chanloss(0); done() }
  :: atomic { nloss < MAXLOSS && holder == 1 -> nloss++;
       printf("@ FAULT: r1 loses its channel\n"); chanloss(1); done() }
  :: atomic { ncrash < MAXCRASH && (holder == 0 || opc[0] != OIDLE) -> ncrash++;
       printf("@ FAULT: r0 is killed\n"); crash(0); done() }
  :: atomic { ncrash < MAXCRASH && (holder == 1 || opc[1] != OIDLE) -> ncrash++;
       printf("@ FAULT: r1 is killed\n"); crash(1); done() }
  /* recovery: reopen the channel; restart, replaying the log */
  :: atomic { pc[0] == DISC -> pc[0] = IDLE; subscribe(0); done() }
  :: atomic { pc[1] == DISC -> pc[1] = IDLE; subscribe(1); done() }
  :: atomic { pc[0] == DOWN -> applied[0] = loglen; pc[0] = IDLE; subscribe(0); done() }
  :: atomic { pc[1] == DOWN -> applied[1] = loglen; pc[1] = IDLE; subscribe(1); done() }
  od
}

/* SETTLE (liveness, lightly): when nothing can move any more, every item is
   acked, or the head is held parked and the fold parks it, or held paused
   and the fold says paused; nothing is half done, nothing is in flight. */
proctype Settle() {
  timeout ->
  assert(SETTLE && (fly[0] == 0 && opc[0] == OIDLE && opc[1] == OIDLE));
  assert(SETTLE && (pc[0] == IDLE || pc[0] == PARKED || pc[0] == PAUSED));
  assert(SETTLE && (pc[1] == IDLE || pc[1] == PARKED || pc[1] == PAUSED));
  assert(SETTLE && (head > NI || holder != NONE));
  assert(SETTLE && (holder == NONE || pc[holder] == PARKED || pc[holder] == PAUSED));
  assert(SETTLE && (tparked == (holder != NONE && pc[holder] == PARKED)));
  assert(SETTLE && (!tparked || held[holder] == tpitem));
  assert(SETTLE && (holder == NONE || pc[holder] != PAUSED || tpaused))
}

init {
  c_code {
    char *e;
    if ((e = getenv("PML_NI")) != NULL) now.NI = atoi(e);
    if ((e = getenv("PML_MAXLOSS")) != NULL) now.MAXLOSS = atoi(e);
    if ((e = getenv("PML_MAXCRASH")) != NULL) now.MAXCRASH = atoi(e);
    if ((e = getenv("PML_MAXFAIL")) != NULL) now.MAXFAIL = atoi(e);
    if ((e = getenv("PML_MAXADM")) != NULL) now.MAXADM = atoi(e);
    if ((e = getenv("PML_MAXOPS")) != NULL) now.MAXOPS = atoi(e);
    if ((e = getenv("PML_FIRSTFAIL")) != NULL) now.FIRSTFAIL = atoi(e);
  };
  assert(NI >= 1 && NI <= 3);
  atomic {
    woff[0] = NOWAIT; woff[1] = NOWAIT;
    pc[0] = IDLE; pc[1] = IDLE;
    subscribe(0); subscribe(1);
    run Env(); run Head(0); run Head(1); run Op(0); run Op(1);
    run Settle()
  }
}
