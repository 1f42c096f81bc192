;; upcase_object: {name, ns?} -> the new version's {ns, name, version}.
;; Reads an object from Object Memory (obj.get), upper-cases (ASCII) every string value
;; at the top level of its value (a map), and writes it back as a new version (obj.put,
;; with expect_version, so a concurrent writer makes this fail with CONFLICT rather than
;; be overwritten). Other values are copied as they are.
(module (;libos:prelude;)
  (data (i32.const 1024) "obj.get")
  (data (i32.const 1032) "obj.put")
  (data (i32.const 1040) "type")
  (data (i32.const 1048) "version")
  (data (i32.const 1056) "expect_version")
  (data (i32.const 1072) "ns")
  (data (i32.const 1080) "upcase_object needs {name: string}")
  (data (i32.const 1120) "the object's value is not a map")

  ;; Upper-case the last $n bytes written.
  (func $upcase_tail (param $n i32)
    (local $q i32) (local $c i32)
    (local.set $q (i32.sub (global.get $w_pos) (local.get $n)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $q) (global.get $w_pos)))
        (local.set $c (i32.load8_u (local.get $q)))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (local.get $q) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (br $next))))

  (func (export "run") (param $args i32) (param $args_len i32) (result i64)
    (local $name i64) (local $ns i64) (local $has_ns i32) (local $type i64)
    (local $version i64) (local $obj i32) (local $end i32) (local $n i32) (local $s i64)
    ;; args.name, args.ns
    (call $r_begin (local.get $args) (local.get $args_len))
    (if (i32.eqz (call $mp_find (i32.const 16) (i32.const 4)))
      (then (return (call $ret_error (i32.const 48) (i32.const 16) (i32.const 1080) (i32.const 34)))))
    (local.set $name (call $mp_read_str))
    (call $r_begin (local.get $args) (local.get $args_len))
    (if (call $mp_find (i32.const 1072) (i32.const 2))
      (then (local.set $ns (call $mp_read_str)) (local.set $has_ns (i32.const 1))))

    ;; obj.get {name, ns?}
    (call $sys_begin (i32.const 1024) (i32.const 7))
    (call $mp_map (i32.add (i32.const 1) (local.get $has_ns)))
    (call $mp_str (i32.const 16) (i32.const 4))
    (call $mp_str (call $ptr_of (local.get $name)) (call $len_of (local.get $name)))
    (if (local.get $has_ns)
      (then (call $mp_str (i32.const 1072) (i32.const 2))
            (call $mp_str (call $ptr_of (local.get $ns)) (call $len_of (local.get $ns)))))
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))

    ;; the reader is at {ns, name, version, type, value}: look each field up from its start
    (local.set $obj (global.get $r_pos))
    (local.set $end (global.get $r_end))
    (if (i32.eqz (call $mp_find (i32.const 1040) (i32.const 4))) (then (call $bad)))
    (local.set $type (call $mp_read_str))
    (call $r_begin (local.get $obj) (i32.sub (local.get $end) (local.get $obj)))
    (if (i32.eqz (call $mp_find (i32.const 1048) (i32.const 7))) (then (call $bad)))
    (local.set $version (call $mp_read_int))
    (call $r_begin (local.get $obj) (i32.sub (local.get $end) (local.get $obj)))
    (if (i32.eqz (call $mp_find (i32.const 28) (i32.const 5))) (then (call $bad)))
    (if (i32.ne (call $mp_kind) (i32.const 7))
      (then (return (call $ret_error (i32.const 48) (i32.const 16) (i32.const 1120) (i32.const 31)))))

    ;; obj.put {name, ns?, type, expect_version, value: upper-cased copy}
    (call $sys_begin (i32.const 1032) (i32.const 7))
    (call $mp_map (i32.add (i32.const 4) (local.get $has_ns)))
    (call $mp_str (i32.const 16) (i32.const 4))
    (call $mp_str (call $ptr_of (local.get $name)) (call $len_of (local.get $name)))
    (if (local.get $has_ns)
      (then (call $mp_str (i32.const 1072) (i32.const 2))
            (call $mp_str (call $ptr_of (local.get $ns)) (call $len_of (local.get $ns)))))
    (call $mp_str (i32.const 1040) (i32.const 4))
    (call $mp_str (call $ptr_of (local.get $type)) (call $len_of (local.get $type)))
    (call $mp_str (i32.const 1056) (i32.const 14))
    (call $mp_int (local.get $version))
    (call $mp_str (i32.const 28) (i32.const 5))
    (local.set $n (call $mp_read_map))
    (call $mp_map (local.get $n))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (call $mp_copy)                                  ;; the key, as it is
        (if (i32.eq (call $mp_kind) (i32.const 4))
          (then
            (local.set $s (call $mp_read_str))
            (call $mp_str (call $ptr_of (local.get $s)) (call $len_of (local.get $s)))
            (call $upcase_tail (call $len_of (local.get $s))))
          (else (call $mp_copy)))
        (br $next)))
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))

    ;; the put's result, {ns, name, version}, is this tool's result
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))
)
