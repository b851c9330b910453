-- spec/copy_api_spec.lua: the Lua side of jobs: vdk.copy, vdk.compare and
-- vdk.measure; job:wait/cancel/progress, on_progress on the loop, several
-- jobs on one loop, errors raised in callbacks, images kept alive by jobs,
-- top-only copies, fault injection through vdk.testing, misuse.
local U = require "support.util"
local X = require "support.copy_util"
local vdk = require "vdk"

local dir = U.tmpdir()
local SRC = X.mixed_raw(dir .. "/src.raw", "8M")
local DATA = dir .. "/data.raw"
X.sh("dd if=/dev/urandom of=%s bs=1M count=16 status=none", U.q(DATA))

local n = 0
local function new_target(size, format)
  n = n + 1
  local path = ("%s/t%d.%s"):format(dir, n, format or "qcow2")
  return assert(vdk.create(path, { format = format or "qcow2", size = size })), path
end

describe("vdk.copy", function()
  it("copies, reports progress on the loop and ends with phase done", function()
    local src = assert(vdk.open(SRC))
    local dst, path = new_target(src.size)
    local phases, last = {}, nil
    local job = assert(vdk.copy{ source = src, target = dst, fresh_target = true,
                                 progress_interval = 0.001,
                                 on_progress = function(p) phases[p.phase] = true; last = p end })
    assert.matches("^vdk.job: copy", tostring(job))
    assert.is_true(job:wait())
    assert.is_true(job:is_done())
    assert.is_true(phases.done)
    assert.equal(last.total, last.done)
    local p = job:progress()
    assert.equal(src.size, p.total)
    assert.equal(p.total, p.bytes_written + p.bytes_zeroed + p.bytes_skipped)
    assert.equal(0, p.in_flight)
    assert.is_false(p.interrupted)
    src:close()
    dst:close()
    X.assert_same(SRC, path)
    X.assert_clean(path)
  end)

  it("runs several jobs on one loop; waiting for one lets the others progress", function()
    local jobs, paths = {}, {}
    for i = 1, 3 do
      local src = assert(vdk.open(DATA))
      local dst
      dst, paths[i] = new_target(src.size, "raw")
      jobs[i] = assert(vdk.copy{ source = src, target = dst, fresh_target = true,
                                 max_requests = 2, request_size = 1 << 20 })
      src:close() -- the job keeps its images alive
      dst:close()
    end
    assert.is_true(jobs[3]:wait())
    local moved = jobs[1]:progress().done + jobs[2]:progress().done
    assert.truthy(moved > 0, "the other jobs did not progress")
    assert.is_true(jobs[1]:wait())
    assert.is_true(jobs[2]:wait())
    for i = 1, 3 do X.assert_same(DATA, paths[i]) end
  end)

  it("cancels within a second", function()
    local src = assert(vdk.open(DATA))
    local dst = new_target(src.size, "raw")
    local at
    local job = assert(vdk.copy{ source = src, target = dst, rate_limit = 1 << 20,
                                 request_size = 256 << 10, progress_interval = 0.05,
                                 on_progress = function(p)
                                   if not at and p.done > 0 then
                                     at = p.elapsed
                                     job_to_cancel:cancel()
                                   end
                                 end })
    _G.job_to_cancel = job
    local ok, msg, code = job:wait()
    _G.job_to_cancel = nil
    assert.is_nil(ok)
    assert.equal("CANCELED", code)
    assert.matches("^canceled after %d+ of %d+ bytes$", msg)
    local p = job:progress()
    assert.truthy(p.done < p.total)
    assert.truthy(p.elapsed - at < 1, ("stopped %.2f s after the cancel"):format(p.elapsed - at))
    src:close()
    dst:close()
  end)

  it("re-raises an error from a callback in wait and cancels that job", function()
    local src = assert(vdk.open(DATA))
    local dst = new_target(src.size, "raw")
    local job = assert(vdk.copy{ source = src, target = dst, rate_limit = 4 << 20,
                                 progress_interval = 0.01,
                                 on_progress = function() error({ tag = "boom" }) end })
    local ok, err = pcall(job.wait, job)
    assert.is_false(ok)
    assert.same({ tag = "boom" }, err)
    local r, msg, code = job:wait()
    assert.is_nil(r)
    assert.equal("CANCELED", code)
    assert.matches("on_progress callback raised an error", msg)
    src:close()
    dst:close()
  end)

  it("raises another job's callback error from the wait that runs the loop", function()
    local src = assert(vdk.open(DATA))
    local d1, d2 = new_target(src.size, "raw"), new_target(src.size, "raw")
    local quiet = assert(vdk.copy{ source = src, target = d1, rate_limit = 8 << 20 })
    local noisy = assert(vdk.copy{ source = src, target = d2, rate_limit = 8 << 20,
                                   progress_interval = 0.01,
                                   on_progress = function() error("noisy failed") end })
    local ok, err = pcall(quiet.wait, quiet)
    assert.is_false(ok)
    assert.matches("noisy failed", err)
    assert.equal("CANCELED", select(3, noisy:wait()))
    quiet:cancel()
    quiet:wait()
    src:close()
    d1:close()
    d2:close()
  end)

  it("copies only the top layer with top_only", function()
    local base = X.mixed_raw(dir .. "/base.raw", "8M")
    local top = dir .. "/top.qcow2"
    X.sh("qemu-img create -q -f qcow2 -b base.raw -F raw %s", U.q(top))
    X.sh("qemu-io -c 'write -P 0x42 1M 64k' -c 'write -z 3M 64k' %s", U.q(top))
    local out = dir .. "/top-copy.qcow2"
    X.sh("qemu-img create -q -f qcow2 -b base.raw -F raw %s", U.q(out))
    local src = assert(vdk.open(top))
    local dst = assert(vdk.open(out, { readonly = false }))
    assert.is_true(assert(vdk.copy{ source = src, target = dst, top_only = true }):wait())
    src:close()
    dst:close()
    X.assert_same(top, out)
    X.assert_clean(out)
    assert.equal(1, X.allocated_clusters(out)) -- the data cluster
    local present = {}
    for _, e in ipairs(U.cjson().decode(U.must("qemu-img map --output=json %s", U.q(out)))) do
      if e.depth == 0 and e.present then present[#present + 1] = { e.start, e.length, e.zero } end
    end
    assert.same({ { 1 << 20, 65536, false }, { 3 << 20, 65536, true } }, present)
    assert.truthy(base)
  end)

  it("reports a write error with the target, the offset and the cause", function()
    local testing = require "vdk.testing"
    local path = dir .. "/enospc.raw"
    X.sh("qemu-img create -q -f raw %s 16M", U.q(path))
    local rule = testing.fault{ path = path, op = "write", nth = 2, errno = "ENOSPC" }
    local dst = assert(vdk.open(path, { format = "raw", readonly = false }))
    rule:remove()
    local src = assert(vdk.open(DATA))
    local ok, msg, code = assert(vdk.copy{ source = src, target = dst }):wait()
    assert.is_nil(ok)
    assert.equal("ENOSPC", code)
    assert.matches("^error while writing '" .. path:gsub("%p", "%%%0") .. "' at byte %d+: .*"
                   .. "No space left on device$", msg)
    src:close()
    dst:close()
    testing.clear()
  end)

  it("returns failures and raises on misuse", function()
    local src = assert(vdk.open(SRC))
    local small = new_target(1 << 20, "raw")
    local ok, msg, code = vdk.copy{ source = src, target = small }
    assert.is_nil(ok)
    assert.equal("EINVAL", code)
    assert.matches("smaller than the source", msg)
    ok, msg, code = vdk.copy{ source = src, target = src }
    assert.is_nil(ok)
    assert.equal("EROFS", code)
    assert.has_error(function() vdk.copy{ source = src, target = small, bogus = 1 } end,
                     "copy: unknown option 'bogus'")
    assert.has_error(function() vdk.copy{ source = "x", target = small } end)
    assert.has_error(function() vdk.copy{ source = src, target = small, max_requests = -1 } end)
    ok, msg, code = vdk.copy{ source = src, target = small, max_requests = 65 }
    assert.equal("OPTION", code)
    small:close()
    assert.has_error(function() vdk.copy{ source = src, target = small } end, "target is closed")
    src:close()
  end)

  it("ends jobs nobody waits for when the Lua state closes", function()
    local code, out, err = X.vdk_script(dir, ([[
      local vdk = require "vdk"
      local src = assert(vdk.open(%q))
      local dst = assert(vdk.create(%q, { size = src.size }))
      vdk.copy{ source = src, target = dst, rate_limit = 1 << 20 }
      collectgarbage()
      print("bye")
      os.exit(0, true)
    ]]):format(DATA, dir .. "/orphan.raw"))
    assert.equal(0, code, err)
    assert.equal("bye\n", out)
  end)

  it("cancels a job leaving a <close> scope", function()
    local src = assert(vdk.open(DATA))
    local dst = new_target(src.size, "raw")
    local job
    do
      local j <close> = assert(vdk.copy{ source = src, target = dst, rate_limit = 1 << 20 })
      job = j
    end
    assert.is_true(job:is_done())
    assert.equal("CANCELED", select(3, job:wait()))
    src:close()
    dst:close()
  end)
end)

describe("vdk.compare and vdk.measure", function()
  it("compare returns qemu-img's verdicts", function()
    local a = assert(vdk.open(SRC))
    local copy = dir .. "/cmp.raw"
    X.sh("cp %s %s", U.q(SRC), U.q(copy))
    local b = assert(vdk.open(copy, { readonly = false }))
    assert.same({ "equal", 0 }, { vdk.compare(a, b):wait() })
    assert(b:write(4 * 1024 * 1024 + 700, "\1"))
    assert.same({ "content", 4 * 1024 * 1024 + 512 }, { vdk.compare(a, b):wait() })
    assert.same({ "content", 4 * 1024 * 1024 + 512 },
                { vdk.compare(a, b, { max_requests = 1, request_size = 4096 }):wait() })
    a:close()
    b:close()
  end)

  it("measure agrees with qemu-img measure", function()
    local src = assert(vdk.open(SRC))
    local m = assert(vdk.measure{ format = "qcow2", source = src })
    local q = U.cjson().decode(U.must("qemu-img measure --output=json -O qcow2 %s", U.q(SRC)))
    assert.equal(q.required, m.required)
    assert.equal(q["fully-allocated"], m.fully_allocated)
    m = assert(vdk.measure{ format = "qcow2", size = 1 << 30,
                            options = { cluster_size = "4k", lazy_refcounts = true } })
    assert.equal(1076379648, m.fully_allocated)
    local ok, msg, code = vdk.measure{ format = "qcow2", size = 1, options = { bogus = 1 } }
    assert.is_nil(ok)
    assert.equal("OPTION", code)
    assert.has_error(function() vdk.measure{ format = "qcow2" } end)
    src:close()
  end)
end)
