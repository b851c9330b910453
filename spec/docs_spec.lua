-- spec/docs_spec.lua: the documentation stays true.
--   * every ```lua block of docs/*.md runs without error under `vdk run`
--     (blocks that create qcow2 images wait for the qcow2 driver; the
--     cookbook's scripts take arguments and run in spec/cookbook_spec.lua
--     and spec/inspect_cookbook_spec.lua);
--   * every ```sh block of docs/*.md runs under bash -e in a fresh folder
--     with the built vdk first on PATH, and every ```c block compiles
--     against core/vdk.h, links libvdk and runs (fences in column 0 only:
--     indented ones are templates with placeholder paths, checked below);
--   * every function of the module and every image method is documented;
--   * the documented way to load the module into stock lua5.4 works.
local U = require "support.util"
local vdk = require "vdk"

local DOCS = { "docs/lua-api.md", "docs/cli.md" }
-- Every Markdown file of docs/ (the cookbook's Lua scripts run elsewhere).
local ALL_DOCS = {}
do
  local p = io.popen("ls " .. U.q(U.src .. "/docs") .. " 2>/dev/null")
  for name in p:lines() do
    if name:match("%.md$") then ALL_DOCS[#ALL_DOCS + 1] = "docs/" .. name end
  end
  p:close()
  local listed = {}
  for _, d in ipairs(DOCS) do listed[d] = true end
  for _, d in ipairs(ALL_DOCS) do
    if not listed[d] and d ~= "docs/cookbook.md" then DOCS[#DOCS + 1] = d end
  end
end

-- The fenced blocks of one language in a Markdown file.
local function fenced_blocks(path, lang)
  local blocks, current, start = {}, nil, nil
  local n = 0
  for line in io.lines(U.src .. "/" .. path) do
    n = n + 1
    if current then
      if line:match("^%s*```%s*$") then
        blocks[#blocks + 1] = { line = start, code = table.concat(current, "\n") .. "\n" }
        current = nil
      else
        current[#current + 1] = line
      end
    elseif line:match("^```" .. lang .. "%s*$") then
      current, start = {}, n
    end
  end
  return blocks
end

describe("shell and C examples of the docs", function()
  local build = U.abspath(U.build)
  local src = U.abspath(U.src)
  for _, doc in ipairs(ALL_DOCS) do
    for _, block in ipairs(fenced_blocks(doc, "sh")) do
      it(("%s:%d (sh) runs"):format(doc, block.line), function()
        local dir = U.tmpdir()
        U.write_file(dir .. "/example.sh", block.code)
        local code, out, err = U.run3("cd %s && PATH=%s:$PATH bash -e -o pipefail example.sh",
          U.q(dir), U.q(build))
        assert.equal(0, code, ("%s:%d\n%s%s"):format(doc, block.line, out, err))
      end)
    end
    for _, block in ipairs(fenced_blocks(doc, "c")) do
      it(("%s:%d (c) compiles and runs"):format(doc, block.line), function()
        local dir = U.tmpdir()
        U.write_file(dir .. "/example.c", block.code)
        local code, out, err = U.run3("cd %s && cc -std=gnu11 -Wall -Werror -I%s example.c "
          .. "-L%s -lvdk -Wl,-rpath,%s -o example && ./example", U.q(dir), U.q(src .. "/core"),
          U.q(build), U.q(build))
        if code ~= 0 and ((out .. err):find("AddressSanitizer", 1, true)
            or (out .. err):find("ASan runtime", 1, true)) then
          pending("a sanitizer build's library needs the ASan runtime")
          return
        end
        assert.equal(0, code, ("%s:%d\n%s%s"):format(doc, block.line, out, err))
      end)
    end
  end
end)

-- The ```lua blocks of a Markdown file: list of {line = n, code = text}.
local function lua_blocks(path)
  local blocks, current, start = {}, nil, nil
  local n = 0
  for line in io.lines(U.src .. "/" .. path) do
    n = n + 1
    if current then
      if line:match("^%s*```%s*$") then
        blocks[#blocks + 1] = { line = start, code = table.concat(current, "\n") .. "\n" }
        current = nil
      else
        current[#current + 1] = line
      end
    elseif line:match("^%s*```lua%s*$") then
      current, start = {}, n
    end
  end
  assert(not current, path .. ": unterminated ```lua block at line " .. tostring(start))
  return blocks
end

describe("documentation examples", function()
  for _, doc in ipairs(DOCS) do
    local blocks = lua_blocks(doc)
    it(doc .. " has Lua examples", function()
      if doc == "docs/lua-api.md" then assert.truthy(#blocks >= 15) end
      if doc == "docs/lua-api.md" or doc == "docs/cli.md" then assert.truthy(#blocks >= 1) end
    end)
    for _, block in ipairs(blocks) do
      local name = ("%s:%d runs"):format(doc, block.line)
      it(name, function()
        local dir = U.tmpdir()
        local script = dir .. "/example.lua"
        U.write_file(script, block.code)
        local code, out, err = U.vdk_cmd("run", script)
        assert.equal(0, code, ("%s\n%s%s"):format(name, out, err))
        assert.equal("", err)
      end)
    end
  end
end)

describe("documentation coverage", function()
  local api = U.read_file(U.src .. "/docs/lua-api.md")

  it("documents every module function", function()
    for name, value in pairs(vdk) do
      if type(value) == "function" then
        assert.truthy(api:find("vdk." .. name .. "(", 1, true), "vdk." .. name .. " is not documented")
      end
    end
    assert.truthy(api:find("vdk.version", 1, true))
  end)

  it("documents every image method and field", function()
    local methods = require("vdk.core").image_methods
    for name in pairs(methods) do
      assert.truthy(api:find("img:" .. name .. "(", 1, true), "img:" .. name .. " is not documented")
    end
    for _, field in ipairs({ "format", "filename", "size", "cluster_size", "readonly", "backing",
                             "backing_filename", "backing_format", "full_backing_filename", "closed" }) do
      assert.truthy(api:find("| `" .. field .. "` |", 1, true), field .. " is not documented")
    end
  end)

  it("documents every command of vdk --help in docs/cli.md", function()
    local cli_doc = U.read_file(U.src .. "/docs/cli.md")
    for _, name in ipairs(require("vdk.cli").COMMANDS) do
      assert.truthy(cli_doc:find("## vdk " .. name .. "\n", 1, true), name .. " is not documented")
    end
  end)
end)

describe("loading into stock lua5.4", function()
  it("works with the documented LUA_PATH and LUA_CPATH", function()
    local src, build = U.abspath(U.src), U.abspath(U.build)
    local code, out, err = U.run3(
      "LUA_PATH=%s LUA_CPATH=%s lua5.4 -e %s",
      U.q(src .. "/scripts/?.lua;" .. src .. "/scripts/?/init.lua;;"),
      U.q(build .. "/lua/?.so;;"),
      U.q('local vdk = require "vdk"; print(vdk.version, vdk.drivers()[1] ~= nil)'))
    if code ~= 0 and err:find("ASan runtime", 1, true) then
      pending("a sanitizer build's module loads only into the vdk launcher")
      return
    end
    assert.equal(0, code, err)
    assert.equal(vdk.version .. "\ttrue\n", out)
  end)
end)
