  ;; ---- libos guest library for WebAssembly text tools (wasm-tools/lib.wat) -------------
  ;;
  ;; Spliced into a module in place of the prelude marker (see ABI.md), by the broker at
  ;; registration, or by sandboxes.wasm_guest.module(). It
  ;; provides the ABI's imports and exports (memory, alloc), a bump allocator, a msgpack
  ;; writer and reader for small values, and syscall/return helpers. ABI: wasm-tools/ABI.md.
  ;;
  ;; Memory map: [0, 1024) this library's constants; [1024, 65536) the tool's own data
  ;; segments and scratch; [65536, ...) the heap, which only grows (an instance lives for
  ;; one call, so nothing is ever freed).
  ;;
  ;; Writer: one message at a time. $w_begin (or $sys_begin / $ret_begin) starts it at the
  ;; top of the heap, the $mp_* functions append, $w_end (or $sys_call / $ret_end) finishes
  ;; it and returns it packed as (ptr << 32 | len). Nothing may allocate in between.
  ;; Reader: $r_begin / $r_set point it at a region; $mp_read_* consume one value each;
  ;; $mp_find looks a key up in the map at the reader. Anything malformed fails the call
  ;; with INVALID_ARGUMENT; running out of memory fails it with LIMIT_EXCEEDED.

  (import "libos" "syscall" (func $libos_syscall (param i32 i32) (result i64)))
  (import "libos" "log" (func $libos_log (param i32 i32 i32) (result i32)))
  (import "libos" "fail" (func $libos_fail (param i32 i32 i32 i32)))

  (memory (export "memory") 2)

  (data (i32.const 16) "name")
  (data (i32.const 20) "args")
  (data (i32.const 24) "ok")
  (data (i32.const 28) "value")
  (data (i32.const 36) "code")
  (data (i32.const 40) "message")
  (data (i32.const 48) "INVALID_ARGUMENT")
  (data (i32.const 64) "LIMIT_EXCEEDED")
  (data (i32.const 80) "msgpack: unexpected input")
  (data (i32.const 112) "out of memory")

  (global $heap (mut i32) (i32.const 65536))
  (global $w_start (mut i32) (i32.const 0))
  (global $w_pos (mut i32) (i32.const 0))
  (global $r_pos (mut i32) (i32.const 0))
  (global $r_end (mut i32) (i32.const 0))
  (global $resp (mut i64) (i64.const 0))

  ;; -- memory -------------------------------------------------------------------------

  ;; Make linear memory at least `end` bytes long. 1 if it is, 0 if it cannot grow.
  (func $ensure (param $end i64) (result i32)
    (local $have i64)
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.le_u (local.get $end) (local.get $have)) (then (return (i32.const 1))))
    (if (i64.gt_u (local.get $end) (i64.const 0x1_0000_0000)) (then (return (i32.const 0))))
    (i32.ne
      (memory.grow (i32.wrap_i64 (i64.shr_u
        (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
        (i64.const 16))))
      (i32.const -1)))

  ;; alloc(n): n bytes, 8-aligned; 0 if memory cannot grow (the host reads 0 as out of
  ;; memory). Exported: the host calls it for the arguments and for syscall responses.
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $n))))
    (if (i32.eqz (call $ensure (local.get $end))) (then (return (i32.const 0))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  (func $mem_eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (block $differ
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                               (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func $ptr_of (param $packed i64) (result i32)
    (i32.wrap_i64 (i64.shr_u (local.get $packed) (i64.const 32))))
  (func $len_of (param $packed i64) (result i32)
    (i32.wrap_i64 (local.get $packed)))

  ;; -- ending the call early, logging --------------------------------------------------

  ;; End the call with a typed error (code and message are strings in memory).
  (func $fail (param $cp i32) (param $cl i32) (param $mp i32) (param $ml i32)
    (call $libos_fail (local.get $cp) (local.get $cl) (local.get $mp) (local.get $ml))
    (unreachable))
  (func $bad (call $fail (i32.const 48) (i32.const 16) (i32.const 80) (i32.const 25)))
  (func $oom (call $fail (i32.const 64) (i32.const 14) (i32.const 112) (i32.const 13)))

  ;; log(level, ptr, len): 0 debug, 1 info, 2 warn, 3 error.
  (func $log (param $level i32) (param $p i32) (param $n i32)
    (drop (call $libos_log (local.get $level) (local.get $p) (local.get $n))))

  ;; -- msgpack writer -----------------------------------------------------------------

  (func $w_begin
    (global.set $w_start (global.get $heap))
    (global.set $w_pos (global.get $heap)))
  (func $w_room (param $n i32)
    (if (i32.eqz (call $ensure (i64.add (i64.extend_i32_u (global.get $w_pos))
                                        (i64.extend_i32_u (local.get $n)))))
      (then (call $oom))))
  (func $w_end (result i64)
    (global.set $heap (global.get $w_pos))
    (call $pack (global.get $w_start) (i32.sub (global.get $w_pos) (global.get $w_start))))
  (func $w_u8 (param $v i32)
    (call $w_room (i32.const 1))
    (i32.store8 (global.get $w_pos) (local.get $v))
    (global.set $w_pos (i32.add (global.get $w_pos) (i32.const 1))))
  (func $w_be16 (param $v i32)
    (call $w_u8 (i32.shr_u (local.get $v) (i32.const 8)))
    (call $w_u8 (local.get $v)))
  (func $w_be32 (param $v i32)
    (call $w_be16 (i32.shr_u (local.get $v) (i32.const 16)))
    (call $w_be16 (local.get $v)))
  (func $w_be64 (param $v i64)
    (call $w_be32 (i32.wrap_i64 (i64.shr_u (local.get $v) (i64.const 32))))
    (call $w_be32 (i32.wrap_i64 (local.get $v))))
  (func $w_bytes (param $p i32) (param $n i32)
    (call $w_room (local.get $n))
    (memory.copy (global.get $w_pos) (local.get $p) (local.get $n))
    (global.set $w_pos (i32.add (global.get $w_pos) (local.get $n))))

  (func $mp_nil (call $w_u8 (i32.const 0xc0)))
  (func $mp_bool (param $b i32)
    (call $w_u8 (select (i32.const 0xc3) (i32.const 0xc2) (local.get $b))))
  (func $mp_int (param $v i64)
    (if (i64.ge_s (local.get $v) (i64.const 0))
      (then
        (if (i64.lt_u (local.get $v) (i64.const 128))
          (then (call $w_u8 (i32.wrap_i64 (local.get $v))) (return)))
        (if (i64.le_u (local.get $v) (i64.const 0xff))
          (then (call $w_u8 (i32.const 0xcc)) (call $w_u8 (i32.wrap_i64 (local.get $v))) (return)))
        (if (i64.le_u (local.get $v) (i64.const 0xffff))
          (then (call $w_u8 (i32.const 0xcd)) (call $w_be16 (i32.wrap_i64 (local.get $v))) (return)))
        (if (i64.le_u (local.get $v) (i64.const 0xffff_ffff))
          (then (call $w_u8 (i32.const 0xce)) (call $w_be32 (i32.wrap_i64 (local.get $v))) (return)))
        (call $w_u8 (i32.const 0xcf)) (call $w_be64 (local.get $v)) (return)))
    (if (i64.ge_s (local.get $v) (i64.const -32))
      (then (call $w_u8 (i32.wrap_i64 (local.get $v))) (return)))
    (if (i64.ge_s (local.get $v) (i64.const -128))
      (then (call $w_u8 (i32.const 0xd0)) (call $w_u8 (i32.wrap_i64 (local.get $v))) (return)))
    (if (i64.ge_s (local.get $v) (i64.const -32768))
      (then (call $w_u8 (i32.const 0xd1)) (call $w_be16 (i32.wrap_i64 (local.get $v))) (return)))
    (if (i64.ge_s (local.get $v) (i64.const -2147483648))
      (then (call $w_u8 (i32.const 0xd2)) (call $w_be32 (i32.wrap_i64 (local.get $v))) (return)))
    (call $w_u8 (i32.const 0xd3))
    (call $w_be64 (local.get $v)))
  ;; a header for a str/bin/array/map of n items: small form, else 8/16/32-bit length
  (func $w_head (param $n i32) (param $fix i32) (param $fixmax i32)
                (param $b8 i32) (param $b16 i32) (param $b32 i32)
    (if (i32.le_u (local.get $n) (local.get $fixmax))
      (then (call $w_u8 (i32.or (local.get $fix) (local.get $n))) (return)))
    (if (i32.and (i32.le_u (local.get $n) (i32.const 0xff)) (i32.ne (local.get $b8) (i32.const 0)))
      (then (call $w_u8 (local.get $b8)) (call $w_u8 (local.get $n)) (return)))
    (if (i32.le_u (local.get $n) (i32.const 0xffff))
      (then (call $w_u8 (local.get $b16)) (call $w_be16 (local.get $n)) (return)))
    (call $w_u8 (local.get $b32))
    (call $w_be32 (local.get $n)))
  (func $mp_str (param $p i32) (param $n i32)
    (call $w_head (local.get $n) (i32.const 0xa0) (i32.const 31)
                  (i32.const 0xd9) (i32.const 0xda) (i32.const 0xdb))
    (call $w_bytes (local.get $p) (local.get $n)))
  (func $mp_bin (param $p i32) (param $n i32)
    (if (i32.le_u (local.get $n) (i32.const 0xff))
      (then (call $w_u8 (i32.const 0xc4)) (call $w_u8 (local.get $n)))
      (else
        (if (i32.le_u (local.get $n) (i32.const 0xffff))
          (then (call $w_u8 (i32.const 0xc5)) (call $w_be16 (local.get $n)))
          (else (call $w_u8 (i32.const 0xc6)) (call $w_be32 (local.get $n))))))
    (call $w_bytes (local.get $p) (local.get $n)))
  (func $mp_array (param $n i32)
    (call $w_head (local.get $n) (i32.const 0x90) (i32.const 15)
                  (i32.const 0) (i32.const 0xdc) (i32.const 0xdd)))
  (func $mp_map (param $n i32)
    (call $w_head (local.get $n) (i32.const 0x80) (i32.const 15)
                  (i32.const 0) (i32.const 0xde) (i32.const 0xdf)))

  ;; -- msgpack reader -----------------------------------------------------------------

  (func $r_begin (param $p i32) (param $n i32)
    (global.set $r_pos (local.get $p))
    (global.set $r_end (i32.add (local.get $p) (local.get $n))))
  (func $r_set (param $packed i64)
    (call $r_begin (call $ptr_of (local.get $packed)) (call $len_of (local.get $packed))))
  (func $r_need (param $n i32)
    (if (i64.gt_u (i64.add (i64.extend_i32_u (global.get $r_pos)) (i64.extend_i32_u (local.get $n)))
                  (i64.extend_i32_u (global.get $r_end)))
      (then (call $bad))))
  (func $r_skip (param $n i32)
    (call $r_need (local.get $n))
    (global.set $r_pos (i32.add (global.get $r_pos) (local.get $n))))
  (func $r_u8 (result i32)
    (local $v i32)
    (call $r_need (i32.const 1))
    (local.set $v (i32.load8_u (global.get $r_pos)))
    (global.set $r_pos (i32.add (global.get $r_pos) (i32.const 1)))
    (local.get $v))
  (func $r_be16 (result i32)
    (i32.or (i32.shl (call $r_u8) (i32.const 8)) (call $r_u8)))
  (func $r_be32 (result i32)
    (i32.or (i32.shl (call $r_be16) (i32.const 16)) (call $r_be16)))
  (func $r_be64 (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (call $r_be32)) (i64.const 32))
            (i64.extend_i32_u (call $r_be32))))

  ;; What the next value is: 0 nil, 1 bool, 2 int, 3 float, 4 str, 5 bin, 6 array, 7 map,
  ;; 8 anything else (ext types are refused by the broker and by this reader).
  (func $mp_kind (result i32)
    (local $b i32)
    (call $r_need (i32.const 1))
    (local.set $b (i32.load8_u (global.get $r_pos)))
    (if (i32.lt_u (local.get $b) (i32.const 0x80)) (then (return (i32.const 2))))
    (if (i32.ge_u (local.get $b) (i32.const 0xe0)) (then (return (i32.const 2))))
    (if (i32.lt_u (local.get $b) (i32.const 0x90)) (then (return (i32.const 7))))
    (if (i32.lt_u (local.get $b) (i32.const 0xa0)) (then (return (i32.const 6))))
    (if (i32.lt_u (local.get $b) (i32.const 0xc0)) (then (return (i32.const 4))))
    (if (i32.eq (local.get $b) (i32.const 0xc0)) (then (return (i32.const 0))))
    (if (i32.le_u (local.get $b) (i32.const 0xc1)) (then (return (i32.const 8))))
    (if (i32.le_u (local.get $b) (i32.const 0xc3)) (then (return (i32.const 1))))
    (if (i32.le_u (local.get $b) (i32.const 0xc6)) (then (return (i32.const 5))))
    (if (i32.le_u (local.get $b) (i32.const 0xc9)) (then (return (i32.const 8))))
    (if (i32.le_u (local.get $b) (i32.const 0xcb)) (then (return (i32.const 3))))
    (if (i32.le_u (local.get $b) (i32.const 0xd3)) (then (return (i32.const 2))))
    (if (i32.le_u (local.get $b) (i32.const 0xd8)) (then (return (i32.const 8))))
    (if (i32.le_u (local.get $b) (i32.const 0xdb)) (then (return (i32.const 4))))
    (if (i32.le_u (local.get $b) (i32.const 0xdd)) (then (return (i32.const 6))))
    (i32.const 7))

  (func $mp_read_bool (result i32)
    (local $b i32)
    (local.set $b (call $r_u8))
    (if (i32.eq (local.get $b) (i32.const 0xc2)) (then (return (i32.const 0))))
    (if (i32.eq (local.get $b) (i32.const 0xc3)) (then (return (i32.const 1))))
    (call $bad)
    (i32.const 0))

  (func $mp_read_int (result i64)
    (local $b i32)
    (local.set $b (call $r_u8))
    (if (i32.lt_u (local.get $b) (i32.const 0x80)) (then (return (i64.extend_i32_u (local.get $b)))))
    (if (i32.ge_u (local.get $b) (i32.const 0xe0))
      (then (return (i64.extend_i32_s (i32.sub (local.get $b) (i32.const 256))))))
    (if (i32.eq (local.get $b) (i32.const 0xcc)) (then (return (i64.extend_i32_u (call $r_u8)))))
    (if (i32.eq (local.get $b) (i32.const 0xcd)) (then (return (i64.extend_i32_u (call $r_be16)))))
    (if (i32.eq (local.get $b) (i32.const 0xce)) (then (return (i64.extend_i32_u (call $r_be32)))))
    (if (i32.eq (local.get $b) (i32.const 0xcf)) (then (return (call $r_be64))))
    (if (i32.eq (local.get $b) (i32.const 0xd0)) (then (return (i64.extend_i32_s (i32.extend8_s (call $r_u8))))))
    (if (i32.eq (local.get $b) (i32.const 0xd1)) (then (return (i64.extend_i32_s (i32.extend16_s (call $r_be16))))))
    (if (i32.eq (local.get $b) (i32.const 0xd2)) (then (return (i64.extend_i32_s (call $r_be32)))))
    (if (i32.eq (local.get $b) (i32.const 0xd3)) (then (return (call $r_be64))))
    (call $bad)
    (i64.const 0))

  ;; The length of a str (if $bin is 0) or of a str or bin (if $bin is 1) after its header.
  (func $r_bytes_len (param $bin i32) (result i32)
    (local $b i32)
    (local.set $b (call $r_u8))
    (if (i32.and (i32.ge_u (local.get $b) (i32.const 0xa0)) (i32.le_u (local.get $b) (i32.const 0xbf)))
      (then (return (i32.and (local.get $b) (i32.const 31)))))
    (if (i32.eq (local.get $b) (i32.const 0xd9)) (then (return (call $r_u8))))
    (if (i32.eq (local.get $b) (i32.const 0xda)) (then (return (call $r_be16))))
    (if (i32.eq (local.get $b) (i32.const 0xdb)) (then (return (call $r_be32))))
    (if (local.get $bin)
      (then
        (if (i32.eq (local.get $b) (i32.const 0xc4)) (then (return (call $r_u8))))
        (if (i32.eq (local.get $b) (i32.const 0xc5)) (then (return (call $r_be16))))
        (if (i32.eq (local.get $b) (i32.const 0xc6)) (then (return (call $r_be32))))))
    (call $bad)
    (i32.const 0))
  (func $r_payload (param $n i32) (result i64)
    (local $p i32)
    (local.set $p (global.get $r_pos))
    (call $r_skip (local.get $n))
    (call $pack (local.get $p) (local.get $n)))
  ;; A str, packed (ptr << 32 | len), pointing into the message.
  (func $mp_read_str (result i64)
    (call $r_payload (call $r_bytes_len (i32.const 0))))
  ;; A bin or a str, packed.
  (func $mp_read_bytes (result i64)
    (call $r_payload (call $r_bytes_len (i32.const 1))))
  (func $mp_read_array (result i32)
    (local $b i32)
    (local.set $b (call $r_u8))
    (if (i32.eq (i32.and (local.get $b) (i32.const 0xf0)) (i32.const 0x90))
      (then (return (i32.and (local.get $b) (i32.const 15)))))
    (if (i32.eq (local.get $b) (i32.const 0xdc)) (then (return (call $r_be16))))
    (if (i32.eq (local.get $b) (i32.const 0xdd)) (then (return (call $r_be32))))
    (call $bad)
    (i32.const 0))
  (func $mp_read_map (result i32)
    (local $b i32)
    (local.set $b (call $r_u8))
    (if (i32.eq (i32.and (local.get $b) (i32.const 0xf0)) (i32.const 0x80))
      (then (return (i32.and (local.get $b) (i32.const 15)))))
    (if (i32.eq (local.get $b) (i32.const 0xde)) (then (return (call $r_be16))))
    (if (i32.eq (local.get $b) (i32.const 0xdf)) (then (return (call $r_be32))))
    (call $bad)
    (i32.const 0))

  ;; Skip one whole value (iteratively: nesting cannot overflow the stack).
  (func $mp_skip
    (local $todo i64) (local $b i32)
    (local.set $todo (i64.const 1))
    (loop $next
      (local.set $todo (i64.sub (local.get $todo) (i64.const 1)))
      (local.set $b (call $r_u8))
      (block $done
        (br_if $done (i32.lt_u (local.get $b) (i32.const 0x80)))
        (br_if $done (i32.ge_u (local.get $b) (i32.const 0xe0)))
        (if (i32.lt_u (local.get $b) (i32.const 0x90))
          (then (local.set $todo (i64.add (local.get $todo)
                  (i64.extend_i32_u (i32.shl (i32.and (local.get $b) (i32.const 15)) (i32.const 1)))))
                (br $done)))
        (if (i32.lt_u (local.get $b) (i32.const 0xa0))
          (then (local.set $todo (i64.add (local.get $todo)
                  (i64.extend_i32_u (i32.and (local.get $b) (i32.const 15)))))
                (br $done)))
        (if (i32.lt_u (local.get $b) (i32.const 0xc0))
          (then (call $r_skip (i32.and (local.get $b) (i32.const 31))) (br $done)))
        (br_if $done (i32.eq (local.get $b) (i32.const 0xc0)))
        (br_if $done (i32.eq (local.get $b) (i32.const 0xc2)))
        (br_if $done (i32.eq (local.get $b) (i32.const 0xc3)))
        (if (i32.eq (local.get $b) (i32.const 0xc4)) (then (call $r_skip (call $r_u8)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xc5)) (then (call $r_skip (call $r_be16)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xc6)) (then (call $r_skip (call $r_be32)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xca)) (then (call $r_skip (i32.const 4)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xcb)) (then (call $r_skip (i32.const 8)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xcc)) (then (call $r_skip (i32.const 1)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xcd)) (then (call $r_skip (i32.const 2)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xce)) (then (call $r_skip (i32.const 4)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xcf)) (then (call $r_skip (i32.const 8)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xd0)) (then (call $r_skip (i32.const 1)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xd1)) (then (call $r_skip (i32.const 2)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xd2)) (then (call $r_skip (i32.const 4)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xd3)) (then (call $r_skip (i32.const 8)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xd9)) (then (call $r_skip (call $r_u8)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xda)) (then (call $r_skip (call $r_be16)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xdb)) (then (call $r_skip (call $r_be32)) (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xdc))
          (then (local.set $todo (i64.add (local.get $todo) (i64.extend_i32_u (call $r_be16))))
                (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xdd))
          (then (local.set $todo (i64.add (local.get $todo) (i64.extend_i32_u (call $r_be32))))
                (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xde))
          (then (local.set $todo (i64.add (local.get $todo)
                  (i64.shl (i64.extend_i32_u (call $r_be16)) (i64.const 1))))
                (br $done)))
        (if (i32.eq (local.get $b) (i32.const 0xdf))
          (then (local.set $todo (i64.add (local.get $todo)
                  (i64.shl (i64.extend_i32_u (call $r_be32)) (i64.const 1))))
                (br $done)))
        (call $bad))
      (br_if $next (i64.gt_u (local.get $todo) (i64.const 0)))))

  ;; Copy the value at the reader, as it is, to the writer.
  (func $mp_copy
    (local $start i32)
    (local.set $start (global.get $r_pos))
    (call $mp_skip)
    (call $w_bytes (local.get $start) (i32.sub (global.get $r_pos) (local.get $start))))

  ;; With the reader at a map: find the str key [kp, kp+kn). 1: found, the reader is at its
  ;; value. 0: absent, the reader is past the map.
  (func $mp_find (param $kp i32) (param $kn i32) (result i32)
    (local $n i32) (local $s i64)
    (local.set $n (call $mp_read_map))
    (block $absent
      (loop $next
        (br_if $absent (i32.eqz (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (if (i32.eq (call $mp_kind) (i32.const 4))
          (then
            (local.set $s (call $mp_read_str))
            (if (i32.and (i32.eq (call $len_of (local.get $s)) (local.get $kn))
                         (call $mem_eq (call $ptr_of (local.get $s)) (local.get $kp) (local.get $kn)))
              (then (return (i32.const 1)))))
          (else (call $mp_skip)))
        (call $mp_skip)
        (br $next)))
    (i32.const 0))

  ;; -- syscalls and results -----------------------------------------------------------

  ;; Start a request {name: <name>, args: ...}; write the args value next, then $sys_call.
  (func $sys_begin (param $np i32) (param $nl i32)
    (call $w_begin)
    (call $mp_map (i32.const 2))
    (call $mp_str (i32.const 16) (i32.const 4))
    (call $mp_str (local.get $np) (local.get $nl))
    (call $mp_str (i32.const 20) (i32.const 4)))

  ;; Make the syscall. 1: it succeeded and the reader is at its value. 0: it failed;
  ;; $sys_response is then an error {ok: false, code, message}, which `run` can return as
  ;; it is to fail with the same error.
  (func $sys_call (result i32)
    (local $req i64)
    (local.set $req (call $w_end))
    (global.set $resp (call $libos_syscall (call $ptr_of (local.get $req))
                                           (call $len_of (local.get $req))))
    (call $r_set (global.get $resp))
    (if (i32.eqz (call $mp_find (i32.const 24) (i32.const 2))) (then (call $bad)))
    (if (i32.eqz (call $mp_read_bool)) (then (return (i32.const 0))))
    (call $r_set (global.get $resp))
    (if (i32.eqz (call $mp_find (i32.const 28) (i32.const 5))) (then (call $bad)))
    (i32.const 1))
  (func $sys_response (result i64) (global.get $resp))

  ;; Start the result {ok: true, value: ...}; write the value next, then return $ret_end.
  (func $ret_begin
    (call $w_begin)
    (call $mp_map (i32.const 2))
    (call $mp_str (i32.const 24) (i32.const 2))
    (call $mp_bool (i32.const 1))
    (call $mp_str (i32.const 28) (i32.const 5)))
  (func $ret_end (result i64) (call $w_end))
  ;; The result {ok: false, code, message}: the call fails with that typed error.
  (func $ret_error (param $cp i32) (param $cl i32) (param $mp i32) (param $ml i32) (result i64)
    (call $w_begin)
    (call $mp_map (i32.const 3))
    (call $mp_str (i32.const 24) (i32.const 2))
    (call $mp_bool (i32.const 0))
    (call $mp_str (i32.const 36) (i32.const 4))
    (call $mp_str (local.get $cp) (local.get $cl))
    (call $mp_str (i32.const 40) (i32.const 7))
    (call $mp_str (local.get $mp) (local.get $ml))
    (call $w_end))
  ;; ---- end of the libos guest library ---------------------------------------------------
