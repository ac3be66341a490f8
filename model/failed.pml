/*
 * failed.pml -- one non-blocking item through the shared queue, its
 * consumers, the failed store and retry_failed / skip_failed (docs/
 * parking.md "The failed store"), with crashes at every step; checked
 * exhaustively with SPIN: `make model`.  model/README.md has the mapping.
 *
 *   Broker   the shared work queue wq[] and the delay queue dq[] hold
 *            copies of the one item (message id); competing consumers,
 *            one copy per consumer here; a closed channel returns the held
 *            copy to the queue, redelivered; the delay queue gives a copy
 *            back to the work queue, any time.
 *   Log      as in parking.pml: records in flight land in any order; a
 *            view is the fold of a prefix; sync() reads it all.  A read
 *            here picks any prefix that holds what its reader must have
 *            seen, without remembering it (a superset of lagging views).
 *   Cons(r)  replica r's non-blocking pool: run a copy, then one fate:
 *            ack after success, retry later (confirmed delay publish, then
 *            ack), failed (confirmed `failed` record, then ack), or ack of a
 *            redelivered copy that had already failed.
 *   Oper(r)  replica r handles retry_failed / skip_failed: `unfail` (op,
 *            fid), read it back; only if its own record moved the item:
 *            publish it (work queue with a fresh budget, or the archive),
 *            then `released`.  A kill between the two leaves it pending.
 *   Lead(r)  replica r as leader publishes a pending move again, then
 *            `released` (both replicas may believe they lead).  Timing
 *            assumption ("older than 30 s"): never a move whose operator is
 *            alive and still doing it.
 *   Admin    not a process: an operator takes a new retry_failed or
 *            skip_failed naming any fid the store ever showed as failed
 *            (made when it arrives: the same as sent earlier, stale, and
 *            delivered now), duplicates up to the budget; a message that a
 *            killed replica was handling is delivered again.
 *   Env      deliveries, landings, the delay queue, and the faults:
 *            consumer channel loss, kill -9 + restart (replay).
 *   Settle   when nothing can move any more: everything has settled.
 *
 * Copies.  Each copy has a ghost id (0: the original) and a generation: 0
 * for the original and its delayed retries, f for a copy that the move of
 * failure f published.  FIX B below puts the generation on the wire (a
 * header naming the fid it was released from).
 *
 * Variants:
 *   (none)        the protocol with FIX A, B, C: must pass.
 *   DOC_NBCLAIM   as written: no fence on `failed` records.  Must FAIL: a
 *                 late `failed` record of a consumer that lost its copy
 *                 lands after the copy was redelivered and took another
 *                 fate; the store then shows a live item as failed, and a
 *                 retry_failed makes a second live copy.  FIX A: a
 *                 redelivered copy is claimed as in the blocking protocol
 *                 (claim: check-and-set on the per-message claim count,
 *                 read back); `failed` carries the count its writer holds
 *                 the copy under, the fold ignores a stale one, and the
 *                 writer reads it back (and writes it again on the new
 *                 count if a claim for another copy came between).
 *   DOC_NBGEN     as written: "already failed before a crash" = the store
 *                 holds the message id as failed.  Must FAIL: a copy whose
 *                 `failed` record landed but whose ack was lost comes back
 *                 after retry_failed already moved the item (pending or
 *                 released): it runs beside the new copy.  FIX B: copies
 *                 carry their generation; a redelivered copy whose
 *                 generation has a `failed` record in the log is acked.
 *   DOC_REDRIVE   the leader redrives on its (lagging) view.  Must FAIL: it
 *                 republishes a move whose `released` already landed.
 *                 FIX C: sync() before a redrive.
 *
 * Invariant 6, as assertions:
 *   INV6a  the item is always somewhere: a copy in the work or delay queue
 *          or in a consumer, the failed store (failed or pending), the
 *          archive, or it succeeded.                       (in done())
 *   INV6b  an admin action never makes a second live copy: after a move
 *          publishes for the first time, only its copy (and the copies
 *          that copy makes in the delay queue) may start a run -- every
 *          older copy must be dead; after a skip, no copy may run.
 *          Allowed, and only these (documented at-least-once windows):
 *          (1) a move published again, by the leader, while its
 *              `released` has not landed (the crash window between a
 *              confirmed publish and `released`): both copies may run;
 *          (2) a consumer that published a copy to the delay queue and
 *              lost its channel or died before the ack: the original comes
 *              back too.
 *          Once (1) or (2) happened, every copy alive at that moment stays
 *          allowed (dupok): one of them may fail into the store while the
 *          other lives, and a retry_failed of that failure then adds a copy
 *          beside it -- a consequence of the window, not a new duplicate.
 *                                                         (runstart())
 *   CAS    only the writer whose `unfail` moved the item publishes it; a
 *          repeat publish outside window (1) is a violation. (publish())
 *   SETTLE when nothing can move: no copy left, nothing half done, and the
 *          item succeeded, was archived, or waits in the store as failed.
 *   BOUND  the model's own capacities suffice
 *
 * Bounds (MAXLOSS, ...) are variables read from the environment at the
 * start (PML_MAXLOSS, ...); model/run.sh has the sets.
 */

#define NONE 2
#define LOGMAX 16
#define NF 8
#define NQ 4            /* copies the work queue can hold */
#define NOWAIT 255

/* ---- bounds ----
   Defaults; model/run.sh sets them per run from the environment
   (PML_MAXLOSS, ...), so that one compiled verifier checks several bound
   sets.  They never change during a run. */
byte MAXLOSS = 1;       /* consumer channel losses */
byte MAXCRASH = 1;      /* kill -9 */
byte MAXADM = 2;        /* retry_failed / skip_failed messages (dups included) */
byte MAXTRANS = 1;      /* transient failures (retry later via the delay queue) */
byte MAXFF = 2;         /* final failures (the original's first run is one) */
byte MAXREDRIVE = 1;    /* redrive publishes by a leader */

/* ---- records: kind | a<<3 | c<<5 | dest<<8 | who<<9 | task<<10 | orphan<<12
 *   FAILED   a = generation of the failed copy, c = claim count, x = fid
 *   UNFAIL   a = fid, dest (0 retry, 1 skip)
 *   RELEASED a = fid
 *   CLAIM    c = the claim count its writer saw
 * fid of FAILED goes in bits 13-14.  task: 0 consumer, 1 operator, 2 leader.
 */
#define FAILED   1
#define UNFAIL   2
#define RELEASED 3
#define CLAIM    4

#define MK(k,a,c,d,w,t,x) ((k) + (a)*8 + (c)*32 + (d)*256 + (w)*512 + (t)*1024 + (x)*8192)
#define KIND(r)  ((r) & 7)
#define AA(r)    (((r) >> 3) & 3)
#define CC(r)    (((r) >> 5) & 7)
#define DEST(r)  (((r) >> 8) & 1)
#define WHO(r)   (((r) >> 9) & 1)
#define TASK(r)  (((r) >> 10) & 3)
#define XF(r)    (((r) >> 13) & 3)
#define ORPHAN   4096
#define WHOBIT   512
#define KEEP     (7 + 3*8 + 7*32 + 256 + 3*8192)

short log[LOGMAX];
byte loglen;
short fly[NF];

/* the fold of the whole log (derived) */
byte tst;               /* store: 0 nothing, 1 failed, 2 pending */
byte tsfid;
byte everpend;          /* fids that were ever pending (bitmask) */
byte everfailed;        /* fids that were ever failed in the store (bitmask) */

/* ---- broker ---- */
byte wq[NQ];            /* copies: id*2 + redelivered + 1; sorted, zeros last */
byte dq[2];             /* copies in the delay queue: id + 1 */
byte gen[8];            /* generation of copy id (on the wire with FIX B) */
byte nextid = 1;

/* ---- consumers ---- */
#define C_DOWN   0
#define C_DISC   1
#define C_IDLE   2
#define C_GOT    3
#define C_CLAIMW 4      /* claim written, waiting to read it back */
#define C_RUN    5
#define C_FAILW  6      /* `failed` written, waiting to read it back */
#define C_DELAYD 7      /* copy published to the delay queue; ack next */
#define C_ACKW   8      /* fate recorded; ack next */
byte cpc[2];
byte cid[2];            /* copy held */
bit crd[2];             /* it was redelivered */
byte ccnt[2];           /* claim count the copy is held under */
byte cdq[2];            /* ghost: the copy it just put in the delay queue */
byte cwoff[2];
bit mustfail;           /* the original's first run fails */

/* ---- operators ---- */
#define O_IDLE 0
#define O_WAIT 1        /* unfail written, waiting to read it back */
#define O_PUB  2        /* its unfail moved the item: publish next */
#define O_RELW 3        /* published; released written, waiting */
byte opc[2];
byte ofid[2];
bit odest[2];

/* ---- leaders ---- */
#define L_IDLE 0
#define L_PUB  1        /* decided to redrive: publish next */
#define L_RELW 2        /* published; released written, waiting */
byte lpc[2];
byte lfid[2];
bit ldest[2];
bit lok[2];             /* ghost: the decision was taken while the move was pending */
byte lmask[2];          /* fids this process redrove already */

/* ---- control messages: retry/skip naming a fid (bag) ---- */
byte cretry[4];
byte cskip[4];

/* ---- budgets ---- */
byte nloss, ncrash, nadm, ntrans, nff, nfid, nredrive;

/* ---- ghosts ---- */
/* constant 1: `assert(INV6b && ...)` names the invariant in pan's report */
bit INV6a = 1, INV6b = 1, CAS = 1, SETTLE = 1, BOUND = 1;
byte valid = 1;         /* copies (bit per id) that may still start a run */
byte dupok;             /* copies that are documented duplicates (window (2)) */
byte pubs[4];           /* publishes per move (fid) */
bit narch, nsucc;       /* archived at least once; succeeded at least once */

/* temporaries (see parking.pml: zeroed by done()) */
byte v_st, v_fid, v_c, v_lastfail, h_i, h_k;
bit v_dest, v_ok, h_sw;
short h_r, h_t, h_x;   /* h_x: the record landing (fold() uses h_r) */

#ifdef DOC_NBCLAIM
#define FENCE_OK(r) 1
#else
#define FENCE_OK(r) (CC(r) == v_c)
#endif

inline fold(K) {
  d_step {
    v_st = 0; v_fid = 0; v_dest = 0; v_c = 0; v_lastfail = 0; v_ok = 0; h_i = 0;
    do
    :: h_i < K ->
       h_r = log[h_i]; v_ok = 0;
       if
       :: KIND(h_r) == FAILED ->
          /* the store keeps the item, under a new fid (FIX A: fenced) */
          if
          :: FENCE_OK(h_r) ->
             v_st = 1; v_fid = XF(h_r); v_lastfail = v_lastfail | (1 << AA(h_r)); v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == UNFAIL ->
          if
          :: v_st == 1 && v_fid == AA(h_r) -> v_st = 2; v_dest = DEST(h_r); v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == RELEASED ->
          if
          :: v_st == 2 && v_fid == AA(h_r) -> v_st = 0; v_ok = 1
          :: else -> skip
          fi
       :: KIND(h_r) == CLAIM ->
          if
          :: CC(h_r) == v_c -> v_c++; v_ok = 1
          :: else -> skip
          fi;
          assert(BOUND && (v_c < 8))
       :: else -> assert(false)
       fi;
       h_i++
    :: else -> break
    od
  }
}

/* Views.  Here a read picks any prefix that includes what the reader must
   have seen (its own record read back), without remembering it: a superset
   of the lagging views of parking.pml (a view may even look older on the
   next read), which keeps the search small.  Every decision that matters
   reads its own record back or syncs. */
inline readview_from(r, m) {
  h_k = m;
  do
  :: h_k < loglen -> h_k++
  :: break
  od;
  fold(h_k)
}
inline readview(r) { readview_from(r, 0) }
inline sync(r) { fold(loglen) }

/* ---- multisets ---- */
inline canon() {
  d_step {
    h_i = 1;
    do
    :: h_i < NF ->
       if
       :: fly[h_i - 1] < fly[h_i] -> h_t = fly[h_i - 1]; fly[h_i - 1] = fly[h_i]; fly[h_i] = h_t; h_i = 1
       :: else -> h_i++
       fi
    :: else -> break
    od
  }
}
inline sort_wq() {
  d_step {
    h_i = 1;
    do
    :: h_i < NQ ->
       if
       :: wq[h_i - 1] < wq[h_i] -> h_t = wq[h_i - 1]; wq[h_i - 1] = wq[h_i]; wq[h_i] = h_t; h_i = 1
       :: else -> h_i++
       fi
    :: else -> break
    od
  }
}
inline sort_dq() {
  d_step {
    h_i = 1;
    do
    :: h_i < 2 ->
       if
       :: dq[h_i - 1] < dq[h_i] -> h_t = dq[h_i - 1]; dq[h_i - 1] = dq[h_i]; dq[h_i] = h_t; h_i = 1
       :: else -> h_i++
       fi
    :: else -> break
    od
  }
}

inline send(rec) {
  assert(BOUND && (fly[NF-1] == 0));
  fly[NF-1] = rec;
  canon()
}
inline enq(id, rdflag) {
  assert(BOUND && (wq[NQ-1] == 0));        /* room in the queue */
  wq[NQ-1] = (id) * 2 + (rdflag) + 1;
  sort_wq()
}
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

inline prec(x) {
  /* one printf per record: `pan -r` prints the trail's output line by line */
  if
  :: KIND(x) == FAILED   -> printf("@ log[%d] = failed fid %d (copy generation %d, claim count %d) by r%d (late %d)\n", loglen, XF(x), AA(x), CC(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == UNFAIL   -> printf("@ log[%d] = unfail fid %d (dest %d: 0 retry, 1 archive) by r%d (late %d)\n", loglen, AA(x), DEST(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == RELEASED -> printf("@ log[%d] = released fid %d by r%d (late %d)\n", loglen, AA(x), WHO(x), (x & ORPHAN) != 0)
  :: KIND(x) == CLAIM    -> printf("@ log[%d] = claim (saw count %d) by r%d (late %d)\n", loglen, CC(x), WHO(x), (x & ORPHAN) != 0)
  :: else -> skip
  fi
}

/* the broker takes fly[j] into the stream.  A writer that only reads its
   own record back (deterministic: the record is the last one) is woken
   right here, which saves steps that could not interleave with anything
   that matters: the operator's `unfail` read-back, the `released` confirms,
   and an accepted `failed` record */
inline land(j) {
  assert(BOUND && (loglen < LOGMAX));
  h_x = fly[j]; fly[j] = 0;
  prec(h_x);
  log[loglen] = h_x & KEEP;
  loglen++;
  canon();
  fold(loglen);
  tst = v_st; tsfid = (v_st != 0 -> v_fid : 0);
  if
  :: tst == 2 -> everpend = everpend | (1 << tsfid)
  :: tst == 1 -> everfailed = everfailed | (1 << tsfid)
  :: else -> skip
  fi;
  if
  :: (h_x & ORPHAN) != 0 -> skip
  :: (h_x & ORPHAN) == 0 && TASK(h_x) == 0 ->
     if
     :: cpc[WHO(h_x)] == C_FAILW && v_ok -> cpc[WHO(h_x)] = C_ACKW
     :: else -> cwoff[WHO(h_x)] = loglen - 1
     fi
  :: (h_x & ORPHAN) == 0 && TASK(h_x) == 1 ->
     if
     :: opc[WHO(h_x)] == O_WAIT && v_ok ->
        printf("@ r%d: its unfail moved the item\n", WHO(h_x));
        opc[WHO(h_x)] = O_PUB
     :: opc[WHO(h_x)] == O_WAIT && !v_ok ->
        printf("@ r%d: its unfail did not apply: answers, acks the message\n", WHO(h_x));
        opc[WHO(h_x)] = O_IDLE; ofid[WHO(h_x)] = 0; odest[WHO(h_x)] = 0
     :: else ->                 /* O_RELW: released is in: ack the message */
        opc[WHO(h_x)] = O_IDLE; ofid[WHO(h_x)] = 0; odest[WHO(h_x)] = 0
     fi
  :: (h_x & ORPHAN) == 0 && TASK(h_x) == 2 ->
     lpc[WHO(h_x)] = L_IDLE; lfid[WHO(h_x)] = 0; ldest[WHO(h_x)] = 0; lok[WHO(h_x)] = 0
  fi
}

/* ---- symmetry of the replicas (see parking.pml) ---- */
#define KEY1(r) (cpc[r]*4096 + cid[r]*512 + crd[r]*256 + ccnt[r]*32 + opc[r]*8 + ofid[r]*2 + odest[r])
#define KEY2(r) (lpc[r]*8192 + lfid[r]*2048 + ldest[r]*1024 + lok[r]*512 + lmask[r]*32)
#define KEY3(r) (cwoff[r])
#define KEY4b(r) (cdq[r])
#define KEY4(r) 0
#define SWAP(a) h_t = a[0]; a[0] = a[1]; a[1] = h_t
inline symm() {
#ifndef NOSYM
  d_step {
    h_sw = (KEY1(0) > KEY1(1) ||
            (KEY1(0) == KEY1(1) && (KEY2(0) > KEY2(1) ||
              (KEY2(0) == KEY2(1) && (KEY3(0) > KEY3(1) ||
                (KEY3(0) == KEY3(1) && (KEY4(0) > KEY4(1) ||
                  (KEY4(0) == KEY4(1) && KEY4b(0) > KEY4b(1)))))))));
    if
    :: h_sw ->
       SWAP(cpc); SWAP(cid); SWAP(crd); SWAP(ccnt); SWAP(cdq); SWAP(cwoff);
       SWAP(opc); SWAP(ofid); SWAP(odest);
       SWAP(lpc); SWAP(lfid); SWAP(ldest); SWAP(lok); SWAP(lmask);
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

#define HOLDS(r) (cpc[r] >= C_GOT)
#define NCOPIES ((wq[0] != 0) + (wq[1] != 0) + (wq[2] != 0) + (wq[3] != 0) + \
                 (dq[0] != 0) + (dq[1] != 0) + HOLDS(0) + HOLDS(1))

inline done() {
  symm();
  /* INV6a: the item is always somewhere */
  assert(INV6a && (NCOPIES > 0 || tst != 0 || narch > 0 || nsucc > 0));
  /* plain statements, not a d_step: a d_step that ends an atomic lets the
     simulator (spin -t) run on into the next step, so trails would not replay */
  v_st = 0; v_fid = 0; v_dest = 0; v_c = 0; v_lastfail = 0; v_ok = 0;
  h_i = 0; h_k = 0; h_sw = 0; h_r = 0; h_t = 0; h_x = 0
}

/* a move (fid f, dest d) publishes: a fresh copy to the work queue, or the
   archive.  `again`: this is a repeat publish of the move, and it was
   decided while the move was still pending (window (1)) */
inline publish(f, d, again) {
  if
  :: pubs[f] == 0 ->
     /* the first publish of the move: every older copy must be dead now */
     if
     :: d == 0 -> valid = (1 << nextid) | (valid & dupok)
     :: else -> valid = valid & dupok
     fi
  :: else ->
     /* CAS: a repeat publish only inside window (1) */
     assert(CAS && (again));
     /* window (1): every copy alive now, and the new one, are documented
        duplicates: later admin moves leave them allowed to run */
     if
     :: d == 0 -> valid = valid | (1 << nextid); dupok = dupok | valid
     :: else -> dupok = dupok | valid
     fi
  fi;
  pubs[f]++;
  if
  :: d == 0 ->
     printf("@ copy %d (generation %d) published to the work queue\n", nextid, f);
     gen[nextid] = f; enq(nextid, 0); nextid++; assert(BOUND && (nextid < 8))
  :: else ->
     printf("@ the item is published to the archive\n");
     narch = 1
  fi
}

inline runstart(r) {
  /* INV6b: no second live copy: only a copy still allowed may run */
  assert(INV6b && ((valid & (1 << cid[r])) != 0));
  printf("@ r%d runs copy %d (generation %d)\n", r, cid[r], gen[cid[r]]);
  cpc[r] = C_RUN
}

inline ack(r) {
  printf("@ r%d acks copy %d\n", r, cid[r]);
  cpc[r] = C_IDLE; cid[r] = 0; crd[r] = 0; ccnt[r] = 0; cdq[r] = 0
}

/* after the claim or the sync: "already failed before a crash"? */
#ifdef DOC_NBGEN
#define ALREADY_FAILED(r) (v_st == 1)
#else
/* FIX B: a `failed` record of this copy's generation was accepted */
#define ALREADY_FAILED(r) ((v_lastfail & (1 << gen[cid[r]])) != 0)
#endif

proctype Cons(byte r) {
end:
  do
  :: atomic { cpc[r] == C_GOT ->
       if
       :: crd[r] ->
#ifdef DOC_NBCLAIM
          sync(r);
          if
          :: ALREADY_FAILED(r) -> printf("@ r%d: copy %d already failed: acks it\n", r, cid[r]); ack(r)
          :: else -> runstart(r)
          fi
#else
          readview(r);
          printf("@ r%d got copy %d redelivered, sends claim (saw count %d)\n", r, cid[r], v_c);
          send(MK(CLAIM, 0, v_c, 0, r, 0, 0));
          cwoff[r] = NOWAIT; cpc[r] = C_CLAIMW
#endif
       :: else -> runstart(r)
       fi;
       done() }
  :: atomic { cpc[r] == C_CLAIMW && cwoff[r] != NOWAIT ->
       fold(cwoff[r] + 1);
       if
       :: !v_ok ->
          readview_from(r, cwoff[r] + 1);
          printf("@ r%d: its claim lost; claims again (saw count %d)\n", r, v_c);
          send(MK(CLAIM, 0, v_c, 0, r, 0, 0));
          cwoff[r] = NOWAIT
       :: else ->
          readview_from(r, cwoff[r] + 1);
          cwoff[r] = NOWAIT;
          ccnt[r] = v_c;
          if
          :: ALREADY_FAILED(r) -> printf("@ r%d: copy %d already failed: acks it\n", r, cid[r]); ack(r)
          :: else -> runstart(r)
          fi
       fi;
       done() }
  /* the handler returns: one fate */
  :: atomic { cpc[r] == C_RUN ->
       if
       :: !(cid[r] == 0 && mustfail) ->
          printf("@ r%d: copy %d succeeds\n", r, cid[r]);
          nsucc = 1; cpc[r] = C_ACKW
       :: !(cid[r] == 0 && mustfail) && ntrans < MAXTRANS ->
          /* retry later: confirmed publish to the delay queue, then ack */
          ntrans++;
          printf("@ r%d: copy %d fails (transient): copy %d to the delay queue\n", r, cid[r], nextid);
          gen[nextid] = gen[cid[r]];
          if
          :: (valid & (1 << cid[r])) != 0 -> valid = valid | (1 << nextid)
          :: else -> skip
          fi;
          if
          :: (dupok & (1 << cid[r])) != 0 -> dupok = dupok | (1 << nextid)
          :: else -> skip
          fi;
          cdq[r] = nextid;
          if
          :: dq[0] == 0 -> dq[0] = nextid + 1
          :: dq[0] != 0 -> assert(BOUND && (dq[1] == 0)); dq[1] = nextid + 1
          fi;
          sort_dq();
          nextid++; assert(BOUND && (nextid < 8));
          cpc[r] = C_DELAYD
       :: (cid[r] == 0 && mustfail) || nff < MAXFF ->
          /* failed: a confirmed `failed` record (fenced with FIX A) */
          nff++; mustfail = 0; nfid++;
          assert(BOUND && (nfid < 4));
#ifdef DOC_NBCLAIM
          h_t = 0;
#else
          if
          :: crd[r] -> h_t = ccnt[r]                 /* held under its claim */
          :: else -> sync(r); h_t = v_c; ccnt[r] = v_c
          fi;
#endif
          printf("@ r%d: copy %d fails for good: sends failed fid %d\n", r, cid[r], nfid);
          send(MK(FAILED, gen[cid[r]], h_t, 0, r, 0, nfid));
          cwoff[r] = NOWAIT; cpc[r] = C_FAILW
       fi;
       done() }
  :: atomic { cpc[r] == C_FAILW && cwoff[r] != NOWAIT ->
#ifndef DOC_NBCLAIM
       fold(cwoff[r] + 1);
       if
       :: !v_ok ->
          /* a claim of another copy of the item came first: write the
             record again on the new count (same fid) */
          h_t = XF(log[cwoff[r]]);
          sync(r); ccnt[r] = v_c;
          printf("@ r%d: its failed record was fenced; writes it again\n", r);
          send(MK(FAILED, gen[cid[r]], ccnt[r], 0, r, 0, h_t));
          cwoff[r] = NOWAIT
       :: else ->
#endif
          cwoff[r] = NOWAIT; cpc[r] = C_ACKW
#ifndef DOC_NBCLAIM
       fi
#endif
       ;
       done() }
  :: atomic { cpc[r] == C_DELAYD -> ack(r); done() }
  :: atomic { cpc[r] == C_ACKW -> ack(r); done() }
  od
}

/* retry_failed / skip_failed */
proctype Oper(byte r) {
end:
  do
  /* a new message from the admin: retry_failed or skip_failed naming a fid
     the console showed as failed (at any time since: it may be stale); made
     when the operator takes it, which is the same as sent then and
     delivered late -- and saves the interleavings of the sending */
  :: atomic { opc[r] == O_IDLE && nadm < MAXADM && everfailed != 0 ->
       nadm++;
       if
       :: (everfailed & 2) != 0 -> ofid[r] = 1
       :: (everfailed & 4) != 0 -> ofid[r] = 2
       :: (everfailed & 8) != 0 -> ofid[r] = 3
       fi;
       if
       :: odest[r] = 0; printf("@ admin: retry_failed fid %d, handled by r%d: sends unfail\n", ofid[r], r)
       :: odest[r] = 1; printf("@ admin: skip_failed fid %d, handled by r%d: sends unfail\n", ofid[r], r)
       fi;
       send(MK(UNFAIL, ofid[r], 0, odest[r], r, 1, 0));
       opc[r] = O_WAIT;
       done() }
  /* a message handed back by a killed replica, delivered again */
  :: atomic { opc[r] == O_IDLE && (cretry[1] + cretry[2] + cretry[3] + cskip[1] + cskip[2] + cskip[3] > 0) ->
       if
       :: cretry[1] > 0 -> cretry[1]--; ofid[r] = 1; odest[r] = 0
       :: cretry[2] > 0 -> cretry[2]--; ofid[r] = 2; odest[r] = 0
       :: cretry[3] > 0 -> cretry[3]--; ofid[r] = 3; odest[r] = 0
       :: cskip[1] > 0 -> cskip[1]--; ofid[r] = 1; odest[r] = 1
       :: cskip[2] > 0 -> cskip[2]--; ofid[r] = 2; odest[r] = 1
       :: cskip[3] > 0 -> cskip[3]--; ofid[r] = 3; odest[r] = 1
       fi;
       printf("@ r%d handles a redelivered message (fid %d, dest %d): sends unfail\n", r, ofid[r], odest[r]);
       send(MK(UNFAIL, ofid[r], 0, odest[r], r, 1, 0));
       opc[r] = O_WAIT;
       done() }
  :: atomic { opc[r] == O_PUB ->
       publish(ofid[r], odest[r], 0);
       send(MK(RELEASED, ofid[r], 0, 0, r, 1, 0)); opc[r] = O_RELW;
       done() }
  od
}

/* the leader's redrive of a pending move "older than 30 s".  The timing
   assumption: a live operator finishes its move (unfail, publish,
   released) well within 30 s, so the leader redrives only moves whose
   operator died (or whose records were orphaned) -- never one that a live
   operator is still doing */
#define MIDWAY(f) (opc[0] != O_IDLE && ofid[0] == (f) || opc[1] != O_IDLE && ofid[1] == (f))
proctype Lead(byte r) {
end:
  do
#ifdef DOC_REDRIVE
  /* looks at its (lagging) view while a move it did not redrive was ever
     pending */
  :: atomic { lpc[r] == L_IDLE && nredrive < MAXREDRIVE && (everpend & ~lmask[r]) != 0 ->
       readview(r);
#else
  /* FIX C: syncs first, so it looks only while a move is pending (the
     guard reads the whole log, which is what the sync will read) */
  :: atomic { lpc[r] == L_IDLE && nredrive < MAXREDRIVE && tst == 2 &&
              (lmask[r] & (1 << tsfid)) == 0 && !MIDWAY(tsfid) ->
       sync(r);
#endif
       if
       :: v_st == 2 && (lmask[r] & (1 << v_fid)) == 0 && !MIDWAY(v_fid) ->
          printf("@ r%d (leader) redrives the pending move of fid %d\n", r, v_fid);
          lfid[r] = v_fid; ldest[r] = v_dest; lok[r] = (tst == 2 && tsfid == v_fid);
          lmask[r] = lmask[r] | (1 << v_fid);
          lpc[r] = L_PUB
       :: else -> skip
       fi;
       done() }
  :: atomic { lpc[r] == L_PUB ->
       nredrive++;
       publish(lfid[r], ldest[r], lok[r]);
       send(MK(RELEASED, lfid[r], 0, 0, r, 2, 0)); lpc[r] = L_RELW;
       done() }
  od
}

/* ---- faults ---- */
/* the consumer's channel closes: its copy goes back, redelivered; the
   window (2): a copy already in the delay queue and the original both live */
inline chanloss(r) {
  if
  :: HOLDS(r) ->
     printf("@ copy %d goes back to the queue, redelivered\n", cid[r]);
     enq(cid[r], 1)
  :: else -> skip
  fi;
  if
  :: cpc[r] == C_DELAYD ->
     /* window (2): the copy and its delayed sibling both live; they, and
        every copy alive now, are documented duplicates */
     dupok = dupok | valid | (1 << cid[r]) | (1 << cdq[r])
  :: else -> skip
  fi;
  orphan(r, 0);
  cpc[r] = C_DISC; cid[r] = 0; crd[r] = 0; ccnt[r] = 0; cdq[r] = 0; cwoff[r] = NOWAIT
}
/* kill -9: every task of the replica; a control message being handled goes
   back to the control queue */
inline crash(r) {
  chanloss(r);
  cpc[r] = C_DOWN;
  orphan(r, 1); orphan(r, 2);
  if
  :: opc[r] != O_IDLE && odest[r] == 0 -> cretry[ofid[r]]++
  :: opc[r] != O_IDLE && odest[r] == 1 -> cskip[ofid[r]]++
  :: else -> skip
  fi;
  opc[r] = O_IDLE; ofid[r] = 0; odest[r] = 0;
  lpc[r] = L_IDLE; lfid[r] = 0; ldest[r] = 0; lok[r] = 0; lmask[r] = 0
}

#define LAND(j) :: atomic { fly[j] != 0 -> land(j); done() }
#if defined(CRASHC)
#define ACTIVE(r) HOLDS(r)
#elif defined(CRASHO)
#define ACTIVE(r) (opc[r] != O_IDLE)
#elif defined(CRASHL)
#define ACTIVE(r) (lpc[r] != L_IDLE)
#else
#define ACTIVE(r) (HOLDS(r) || opc[r] != O_IDLE || lpc[r] != L_IDLE)
#endif

proctype Env() {
end:
  do
  /* the broker delivers a copy to an idle consumer */
  :: atomic { wq[0] != 0 && cpc[0] == C_IDLE ->
       cid[0] = (wq[0] - 1) / 2; crd[0] = (wq[0] - 1) % 2; wq[0] = 0; sort_wq();
       printf("@ broker delivers copy %d to r0 (redelivered %d)\n", cid[0], crd[0]);
       cpc[0] = C_GOT; done() }
  :: atomic { wq[0] != 0 && cpc[1] == C_IDLE ->
       cid[1] = (wq[0] - 1) / 2; crd[1] = (wq[0] - 1) % 2; wq[0] = 0; sort_wq();
       printf("@ broker delivers copy %d to r1 (redelivered %d)\n", cid[1], crd[1]);
       cpc[1] = C_GOT; done() }
  :: atomic { wq[1] != 0 && wq[1] != wq[0] && cpc[0] == C_IDLE ->
       cid[0] = (wq[1] - 1) / 2; crd[0] = (wq[1] - 1) % 2; wq[1] = 0; sort_wq();
       printf("@ broker delivers copy %d to r0 (redelivered %d)\n", cid[0], crd[0]);
       cpc[0] = C_GOT; done() }
  :: atomic { wq[1] != 0 && wq[1] != wq[0] && cpc[1] == C_IDLE ->
       cid[1] = (wq[1] - 1) / 2; crd[1] = (wq[1] - 1) % 2; wq[1] = 0; sort_wq();
       printf("@ broker delivers copy %d to r1 (redelivered %d)\n", cid[1], crd[1]);
       cpc[1] = C_GOT; done() }
  /* the delay queue gives a copy back */
  :: atomic { dq[0] != 0 ->
       printf("@ copy %d leaves the delay queue\n", dq[0] - 1);
       enq(dq[0] - 1, 0); dq[0] = 0; sort_dq(); done() }
  LAND(0) LAND(1) LAND(2) LAND(3) LAND(4) LAND(5) LAND(6) LAND(7)
  /* faults */
  :: atomic { nloss < MAXLOSS && HOLDS(0) -> nloss++;
       printf("@ FAULT: r0 loses its consumer channel\n"); chanloss(0); cpc[0] = C_IDLE; done() }
  :: atomic { nloss < MAXLOSS && HOLDS(1) -> nloss++;
       printf("@ FAULT: r1 loses its consumer channel\n"); chanloss(1); cpc[1] = C_IDLE; done() }
  :: atomic { ncrash < MAXCRASH && ACTIVE(0) -> ncrash++;
       printf("@ FAULT: r0 is killed\n"); crash(0); done() }
  :: atomic { ncrash < MAXCRASH && ACTIVE(1) -> ncrash++;
       printf("@ FAULT: r1 is killed\n"); crash(1); done() }
  :: atomic { cpc[0] == C_DOWN -> cpc[0] = C_IDLE; done() }
  :: atomic { cpc[1] == C_DOWN -> cpc[1] = C_IDLE; done() }
  od
}

proctype Settle() {
  timeout ->
  assert(SETTLE && (NCOPIES == 0 && fly[0] == 0));
  assert(SETTLE && (opc[0] == O_IDLE && opc[1] == O_IDLE && lpc[0] == L_IDLE && lpc[1] == L_IDLE));
  assert(SETTLE && (tst != 2 || nredrive == MAXREDRIVE));   /* pending only if out of redrives */
  assert(SETTLE && (nsucc > 0 || narch > 0 || tst == 1))
}

init {
  c_code {
    char *e;
    if ((e = getenv("PML_MAXLOSS")) != NULL) now.MAXLOSS = atoi(e);
    if ((e = getenv("PML_MAXCRASH")) != NULL) now.MAXCRASH = atoi(e);
    if ((e = getenv("PML_MAXADM")) != NULL) now.MAXADM = atoi(e);
    if ((e = getenv("PML_MAXTRANS")) != NULL) now.MAXTRANS = atoi(e);
    if ((e = getenv("PML_MAXFF")) != NULL) now.MAXFF = atoi(e);
    if ((e = getenv("PML_MAXREDRIVE")) != NULL) now.MAXREDRIVE = atoi(e);
  };
  atomic {
    cwoff[0] = NOWAIT; cwoff[1] = NOWAIT;
    cpc[0] = C_IDLE; cpc[1] = C_IDLE;
    mustfail = 1;
    wq[0] = 1;                  /* the original: copy 0, generation 0 */
    run Env(); run Cons(0); run Cons(1); run Oper(0); run Oper(1);
    run Lead(0); run Lead(1); run Settle()
  }
}
