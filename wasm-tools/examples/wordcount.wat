;; wordcount: {path} -> {words, lines, bytes} of a UTF-8 text file, read with fs.read.
;; Words are runs of bytes other than ASCII whitespace; lines count "\n" (like `wc`).
(module (;libos:prelude;)
  (data (i32.const 1024) "fs.read")
  (data (i32.const 1032) "path")
  (data (i32.const 1040) "words")
  (data (i32.const 1048) "lines")
  (data (i32.const 1056) "bytes")
  (data (i32.const 1064) "wordcount needs {path: string}")

  (func $space (param $c i32) (result i32)
    (i32.or (i32.eq (local.get $c) (i32.const 32))
            (i32.and (i32.ge_u (local.get $c) (i32.const 9))
                     (i32.le_u (local.get $c) (i32.const 13)))))

  (func (export "run") (param $args i32) (param $args_len i32) (result i64)
    (local $path i64) (local $text i64) (local $p i32) (local $n i32) (local $i i32)
    (local $c i32) (local $words i32) (local $lines i32) (local $inword i32)
    ;; args.path
    (call $r_begin (local.get $args) (local.get $args_len))
    (if (i32.eqz (call $mp_find (i32.const 1032) (i32.const 4)))
      (then (return (call $ret_error (i32.const 48) (i32.const 16) (i32.const 1064) (i32.const 30)))))
    (local.set $path (call $mp_read_str))
    ;; fs.read {path}
    (call $sys_begin (i32.const 1024) (i32.const 7))
    (call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1032) (i32.const 4))
    (call $mp_str (call $ptr_of (local.get $path)) (call $len_of (local.get $path)))
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (local.set $text (call $mp_read_str))
    (local.set $p (call $ptr_of (local.get $text)))
    (local.set $n (call $len_of (local.get $text)))
    ;; count
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.eq (local.get $c) (i32.const 10))
          (then (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
        (if (call $space (local.get $c))
          (then (local.set $inword (i32.const 0)))
          (else
            (if (i32.eqz (local.get $inword))
              (then (local.set $words (i32.add (local.get $words) (i32.const 1)))
                    (local.set $inword (i32.const 1))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; {words, lines, bytes}
    (call $ret_begin)
    (call $mp_map (i32.const 3))
    (call $mp_str (i32.const 1040) (i32.const 5))
    (call $mp_int (i64.extend_i32_u (local.get $words)))
    (call $mp_str (i32.const 1048) (i32.const 5))
    (call $mp_int (i64.extend_i32_u (local.get $lines)))
    (call $mp_str (i32.const 1056) (i32.const 5))
    (call $mp_int (i64.extend_i32_u (local.get $n)))
    (call $ret_end))
)
