"""Chinese translations, keyed by the English message (tests check every message has one)."""

ZH: dict[str, str] = {
    # -- navigation, layout
    "Main": "主导航",
    "Dashboard": "仪表盘",
    "Request log": "请求日志",
    "Keys": "密钥",
    "Clients": "客户端",
    "Import / export": "导入 / 导出",
    "Toggle theme": "切换主题",
    "Dark theme": "深色主题",
    "Light theme": "浅色主题",
    "Sign out": "退出登录",
    "Signed out.": "已退出登录。",
    "This UI reads the state store and keys.yaml, and writes only keys.yaml and its own audit log.":
        "本界面读取状态库和 keys.yaml，只写入 keys.yaml 和它自己的审计日志。",
    "No admin token or password is set: anyone who can open this page can change your keys."
    " Set KEYMUX_ADMIN_TOKEN, or admin.password_hash from \"keymux hash-password\".":
        "未设置管理员令牌或密码：任何能打开此页面的人都能修改你的密钥。请设置 KEYMUX_ADMIN_TOKEN，"
        "或用 \"keymux hash-password\" 生成 admin.password_hash。",
    "Something went wrong.": "出错了。",
    "Back to the dashboard": "返回仪表盘",
    "Back": "返回",
    "Cancel": "取消",
    "Save": "保存",
    "Done": "完成",
    "Edit": "编辑",
    "Delete": "删除",
    "Remove": "移除",
    "Copy": "复制",
    "Copied": "已复制",
    "Are you sure?": "确定吗？",
    "Actions": "操作",

    # -- sign in, security
    "Sign in": "登录",
    "Sign in first.": "请先登录。",
    "Token or password": "令牌或密码",
    "Enter the admin token (KEYMUX_ADMIN_TOKEN) or the admin password.":
        "请输入管理员令牌（KEYMUX_ADMIN_TOKEN）或管理员密码。",
    "Wrong token or password.": "令牌或密码错误。",
    "keys.yaml cannot be read, so the admin password is unknown. Fix the file, or start the UI"
    " with KEYMUX_ADMIN_TOKEN set.":
        "无法读取 keys.yaml，因此不知道管理员密码。请修复该文件，或设置 KEYMUX_ADMIN_TOKEN 后再启动界面。",
    "Missing CSRF token: reload the page and try again.": "缺少 CSRF 令牌：请刷新页面后重试。",
    "Invalid CSRF token: reload the page and try again.": "CSRF 令牌无效：请刷新页面后重试。",
    "Cross-origin request refused.": "已拒绝跨源请求。",

    # -- dashboard
    "Totals": "汇总",
    "Usable keys": "可用密钥",
    "Cooling / dead": "冷却中 / 失效",
    "In flight": "进行中",
    "in flight": "并发",
    "Requests": "请求数",
    "Success": "成功率",
    "Tokens today": "今日 token",
    "Chart": "图表",
    "Name": "名称",
    "Provider": "服务商",
    "Key": "密钥",
    "State": "状态",
    "RPM / TPM": "RPM / TPM",
    "Failures": "失败",
    "History": "历史",
    "Time range": "时间范围",
    "Last hour": "最近一小时",
    "Last day": "最近一天",
    "Requests per minute": "每分钟请求数",
    "Latency (s)": "延迟（秒）",
    "Tokens": "Token 数",
    "all keys": "全部密钥",
    "No data yet for the selected keys.": "所选密钥暂无数据。",
    "Select keys in the table to chart them.": "在表格中勾选密钥以绘制图表。",
    "The dashboard needs JavaScript for live updates.": "仪表盘需要 JavaScript 才能实时刷新。",
    "Cannot reach the gateway: showing the keys from keys.yaml, live state unknown.":
        "无法连接网关：以下为 keys.yaml 中的密钥，实时状态未知。",
    'Live figures from worker %(i)s of %(n)s (pid %(pid)s): each refresh reaches one worker; without shared state (Redis) each keeps its own counters.':
        '实时数据来自第 %(i)s 个工作进程（共 %(n)s 个，pid %(pid)s）：每次刷新只连到一个工作进程；没有共享状态（Redis）时各进程的计数各自独立。',
    "Lost contact with the UI server; retrying.": "与界面服务器失去连接，正在重试。",
    "The gateway rejected the last reload:": "网关拒绝了最近一次重新加载：",
    "The gateway cannot write its state store (request log, usage); rows kept in memory:"
    " %(pending)s, dropped: %(dropped)s.":
        "网关无法写入状态存储（请求日志、用量）；内存中保留的行：%(pending)s，已丢弃：%(dropped)s。",
    "keys.yaml does not validate; the gateway keeps its previous config:":
        "keys.yaml 校验未通过，网关继续使用之前的配置：",
    "updated %(time)s": "更新于 %(time)s",
    "%(s)s s left": "剩余 %(s)s 秒",
    "ok": "正常",
    "cooling": "冷却中",
    "dead": "失效",
    "disabled": "已停用",
    "over budget": "超出预算",
    "unknown": "未知",
    "enabled": "已启用",
    "not loaded": "未加载",
    "rate limited": "限流",
    "quota": "额度",
    "auth": "认证",
    "server": "服务端",
    "client error": "客户端错误",
    "Reset cooldown": "重置冷却",
    "Resetting…": "正在重置…",
    "Cooldown of %(name)s reset.": "已重置 %(name)s 的冷却。",
    "The gateway does not know a key named %(name)s.": "网关中没有名为 %(name)s 的密钥。",
    "This gateway has no reset endpoint yet.": "此网关尚不支持重置接口。",
    "The gateway refused the admin token.": "网关拒绝了管理员令牌。",
    "The gateway answered %(status)s.": "网关返回了 %(status)s。",
    "cannot reach the gateway at %(url)s (%(reason)s)": "无法连接位于 %(url)s 的网关（%(reason)s）",
    "the gateway refused the admin token (set the same KEYMUX_ADMIN_TOKEN for the UI and the"
    " gateway)": "网关拒绝了管理员令牌（界面和网关需要设置相同的 KEYMUX_ADMIN_TOKEN）",
    "the gateway answered %(status)s to %(path)s": "网关对 %(path)s 返回了 %(status)s",

    # -- request log
    "%(count)s requests": "共 %(count)s 条请求",
    "1 request": "共 1 条请求",
    "Client": "客户端",
    "Model": "模型",
    "Status": "状态码",
    "any": "任意",
    "errors": "错误",
    "all time": "全部时间",
    "last %(span)s": "最近 %(span)s",
    "From (UTC)": "开始（UTC）",
    "To (UTC)": "结束（UTC）",
    "Filter": "筛选",
    "Clear": "清除",
    "No state store yet: the gateway has not recorded any request.": "尚无状态库：网关还没有记录任何请求。",
    "No request matches these filters.": "没有符合筛选条件的请求。",
    "Time": "时间",
    "Latency": "延迟",
    "Cost": "费用",
    "unknown price": "价格未知",
    "Tokens in / out": "输入 / 输出 token",
    "Attempts": "尝试",
    "stream": "流式",
    "Show attempts": "查看尝试",
    "Hide attempts": "收起尝试",
    "no answer": "无响应",
    "No attempt: the gateway answered itself.": "没有尝试：由网关直接应答。",
    "Request body": "请求体",
    "Response body": "响应体",
    "Pages": "分页",
    "Newer": "较新",
    "Older": "较旧",
    "Page %(page)s of %(pages)s": "第 %(page)s / %(pages)s 页",

    # -- keys
    "Add key": "添加密钥",
    "Edit key %(name)s": "编辑密钥 %(name)s",
    "Secrets are write-only: this page shows a mask, or the ${VAR} a key reads from the environment.":
        "密钥只可写入：此页面只显示掩码，或密钥引用的环境变量 ${VAR}。",
    "No keys in keys.yaml yet.": "keys.yaml 中还没有密钥。",
    "Enabled": "启用",
    "Weight": "权重",
    "Models": "模型",
    "Limits": "限额",
    "not set": "未设置",
    "all of the provider": "服务商的全部模型",
    "rpm": "rpm",
    "tpm": "tpm",
    "Disable": "停用",
    "Enable": "启用",
    "Delete key %(name)s from keys.yaml?": "从 keys.yaml 中删除密钥 %(name)s？",
    "Unique; the only identity shown in the UI, metrics and logs.": "唯一；界面、指标和日志中只显示这个名称。",
    "sk-… or ${OPENAI_API_KEY_1}": "sk-… 或 ${OPENAI_API_KEY_1}",
    "leave empty to keep the current key": "留空则保留当前密钥",
    "Current:": "当前：",
    "Write ${VAR} to read the key from the environment or from .env beside keys.yaml.":
        "填写 ${VAR} 表示从环境变量或 keys.yaml 旁的 .env 中读取密钥。",
    "RPM limit": "RPM 上限",
    "TPM limit": "TPM 上限",
    "Max in flight": "最大并发",
    "Optional allow-list of model globs, separated by commas; empty: every model of the provider.":
        "可选的模型通配符白名单，用逗号分隔；留空表示该服务商的所有模型。",
    "A name is required.": "名称必填。",
    "The key is required: paste it, or write ${VAR} to read it from the environment.":
        "密钥必填：粘贴密钥，或填写 ${VAR} 从环境变量读取。",
    "%(field)s must be a whole number.": "%(field)s 必须是整数。",
    "%(field)s must be a number.": "%(field)s 必须是数字。",
    "Key %(name)s added.": "已添加密钥 %(name)s。",
    "Key %(name)s saved.": "已保存密钥 %(name)s。",
    "Key %(name)s enabled.": "已启用密钥 %(name)s。",
    "Key %(name)s disabled.": "已停用密钥 %(name)s。",
    "Key %(name)s deleted.": "已删除密钥 %(name)s。",
    "keys.yaml changed on disk after this page was loaded (an edit by hand or in another tab)."
    " Nothing was saved: reload the page and make the change again.":
        "本页面加载后 keys.yaml 已在磁盘上被修改（手动编辑或在其他标签页中）。未保存任何内容：请刷新页面后重新修改。",
    "Not saved, the gateway would reject it: %(error)s": "未保存，网关会拒绝该配置：%(error)s",
    "Cannot write keys.yaml: %(reason)s": "无法写入 keys.yaml：%(reason)s",
    "the file is not valid YAML (line %(line)s); fix it by hand first":
        "文件不是有效的 YAML（第 %(line)s 行）；请先手动修复",
    "the top level of the file must be a mapping": "文件顶层必须是映射",
    "no entry named %(name)s in %(section)s:": "%(section)s: 中没有名为 %(name)s 的条目",
    "%(section)s: is not a list in the file; fix it by hand first": "文件中的 %(section)s: 不是列表；请先手动修复",

    # -- clients
    "Token": "令牌",
    "keys.yaml has no clients: section, so the gateway is open: anyone who can reach it may use"
    " your keys. Adding the first client closes it: from then on every request needs a client token.":
        "keys.yaml 中没有 clients: 部分，因此网关是开放的：任何能访问它的人都能使用你的密钥。"
        "添加第一个客户端后网关即关闭：此后每个请求都需要客户端令牌。",
    "The clients: section is empty: the gateway refuses every request. Add a client, or delete"
    " the section by hand to open the gateway.":
        "clients: 部分为空：网关会拒绝所有请求。请添加客户端，或手动删除该部分以开放网关。",
    "Give %(name)s a new token? The old one stops working.": "为 %(name)s 生成新令牌？旧令牌将失效。",
    "New token": "新令牌",
    "Remove client %(name)s? Its token stops working.": "移除客户端 %(name)s？其令牌将失效。",
    "Add a client": "添加客户端",
    "Add client": "添加客户端",
    "A token is generated and shown once, right after the client is added.":
        "添加客户端后会生成令牌，并且只显示这一次。",
    "Client token": "客户端令牌",
    "New token for %(name)s": "%(name)s 的新令牌",
    "Client %(name)s added": "已添加客户端 %(name)s",
    "Copy this token now: it is shown only this once. Later pages show only its mask.":
        "请立即复制此令牌：它只显示这一次，之后的页面只显示掩码。",
    "The application sends it as its API key, e.g. OPENAI_API_KEY, with OPENAI_BASE_URL pointing"
    " at the gateway.": "应用把它当作 API 密钥发送（例如 OPENAI_API_KEY），并将 OPENAI_BASE_URL 指向网关。",
    "Edit client %(name)s": "编辑客户端 %(name)s",
    "Model globs this client may use, separated by commas; empty: any.":
        "该客户端可使用的模型通配符，用逗号分隔；留空表示任意模型。",
    "Client %(name)s saved.": "已保存客户端 %(name)s。",
    "Client %(name)s removed.": "已移除客户端 %(name)s。",

    # -- import / export
    "Import keys": "导入密钥",
    "Paste or upload one of:": "粘贴或上传以下任一格式：",
    "a keymux export (YAML or JSON);": "keymux 导出文件（YAML 或 JSON）；",
    "env lines such as OPENAI_API_KEY_1=…, GEMINI_API_KEY_2=…, ANTHROPIC_API_KEY=… (OPENAI,"
    " ANTHROPIC, GEMINI/GOOGLE, DEEPSEEK, XAI/GROK, GROQ, MISTRAL, OPENROUTER);":
        "环境变量行，例如 OPENAI_API_KEY_1=…、GEMINI_API_KEY_2=…、ANTHROPIC_API_KEY=…（OPENAI、"
        "ANTHROPIC、GEMINI/GOOGLE、DEEPSEEK、XAI/GROK、GROQ、MISTRAL、OPENROUTER）；",
    "an LLM_KEYS JSON array: [{\"provider\": \"openai\", \"key\": \"sk-…\", \"name\": \"optional\"}].":
        "LLM_KEYS JSON 数组：[{\"provider\": \"openai\", \"key\": \"sk-…\", \"name\": \"可选\"}]。",
    "Text": "文本",
    "or a file": "或上传文件",
    "Values for the ${VAR} placeholders of an export (optional)": "导出文件中 ${VAR} 占位符的值（可选）",
    "VAR=value lines, as in the .env block of an export with secrets. Placeholders without a value"
    " stay ${VAR} references.":
        "VAR=value 格式的行，与含密钥导出中的 .env 部分相同。没有提供值的占位符保留为 ${VAR} 引用。",
    "Preview": "预览",
    "Export": "导出",
    "The whole keys.yaml, with every key and client token replaced by a ${VAR} placeholder."
    " The admin section is left out.":
        "完整的 keys.yaml，其中每个密钥和客户端令牌都替换为 ${VAR} 占位符，不包含 admin 部分。",
    "Show export": "查看导出",
    "Download YAML": "下载 YAML",
    "Import preview": "导入预览",
    "Format:": "格式：",
    "Providers that will be added too:": "同时会添加以下服务商：",
    "From": "来源",
    "Result": "结果",
    "skipped": "已跳过",
    "will be added": "将被添加",
    "Nothing found to import.": "没有找到可导入的内容。",
    "Import %(count)s keys": "导入 %(count)s 个密钥",
    "Import 1 key": "导入 1 个密钥",
    "1 key imported.": "已导入 1 个密钥。",
    "env lines": "环境变量行",
    "keymux export": "keymux 导出文件",
    "%(count)s keys imported.": "已导入 %(count)s 个密钥。",
    "The text is too long to import.": "文本太长，无法导入。",
    "keys.yaml does not validate now; fix it first: %(error)s": "keys.yaml 当前校验未通过，请先修复：%(error)s",
    "Cannot read this: %(reason)s.": "无法识别：%(reason)s。",
    "Cannot read the values: line %(line)s is not VAR=VALUE.": "无法读取变量值：第 %(line)s 行不是 VAR=VALUE 格式。",
    "This preview has expired; import again.": "预览已过期，请重新导入。",
    "keys.yaml cannot be exported now: %(error)s": "keys.yaml 当前无法导出：%(error)s",
    "Tick the box to confirm that you want the secrets.": "请勾选复选框以确认你需要导出密钥。",
    "These are your secrets in plain text. Keep them out of chats, tickets and repositories.":
        "以下是明文密钥。请勿将其发到聊天、工单或代码仓库中。",
    "Secrets": "密钥明文",
    "The export names %(count)s variables. To get a matching .env block with their values,"
    " confirm below.": "导出文件引用了 %(count)s 个变量。如需包含其值的 .env 内容，请在下方确认。",
    "I understand: show every secret in plain text.": "我了解：以明文显示所有密钥。",
    "Show the secrets": "显示密钥",
    "nothing to import": "没有可导入的内容",
    "not an export (YAML or JSON), env lines or LLM_KEYS": "既不是导出文件（YAML 或 JSON），也不是环境变量行或 LLM_KEYS",
    "invalid JSON at line %(line)s": "第 %(line)s 行的 JSON 无效",
    "LLM_KEYS must be a JSON array of {provider, key, name}": "LLM_KEYS 必须是由 {provider, key, name} 组成的 JSON 数组",
    "an export needs a 'keys:' list": "导出文件需要包含 'keys:' 列表",
    "needs a provider and a key (strings)": "需要 provider 和 key（字符串）",
    "line %(n)s: not VAR=VALUE, skipped": "第 %(n)s 行：不是 VAR=VALUE 格式，已跳过",
    "line %(n)s: %(var)s is not a provider key variable, skipped": "第 %(n)s 行：%(var)s 不是服务商密钥变量，已跳过",
    "line %(n)s: %(var)s is empty, skipped": "第 %(n)s 行：%(var)s 为空，已跳过",
    "unknown provider %(name)s": "未知服务商 %(name)s",
    "same key as %(name)s, already in the pool": "与 %(name)s 是同一密钥，已在池中",
    "the name %(name)s is already used": "名称 %(name)s 已被使用",
    "item %(n)s": "第 %(n)s 项",
    "line %(n)s": "第 %(n)s 行",
    "line %(n)s, item %(i)s": "第 %(n)s 行第 %(i)s 项",
    "keys[%(n)s]": "keys[%(n)s]",
    # auth
    "Too many failed attempts: try again in %(seconds)s s.": "失败次数过多：请在 %(seconds)s 秒后重试。",
    "Every session is signed out.": "所有会话均已退出登录。",
    "Your session has ended: sign in again.": "你的会话已结束：请重新登录。",
    "Your session has expired: sign in again.": "你的会话已过期：请重新登录。",
    "Your admin token or password, again": "请再次输入管理员令牌或密码",
    "KEYMUX_ADMIN_TOKEN is blank, so it is not accepted. Set a real token (24 characters or more),"
    " or admin.password_hash.":
        "KEYMUX_ADMIN_TOKEN 为空白，因此不被接受。请设置一个真正的令牌（至少 24 个字符），或设置 admin.password_hash。",
    "Sessions": "会话",
    "Browsers signed in to this UI now. A restart of the UI signs every one of them out too.":
        "当前登录此界面的浏览器。重启界面也会让它们全部退出登录。",
    "Session": "会话",
    "Address": "地址",
    "Signed in": "登录时间",
    "Last seen": "最近活动",
    "this one": "当前会话",
    "No one is signed in.": "没有人登录。",
    "Sign out everywhere": "全部退出登录",
    # dashboard
    "cooling for %(model)s": "%(model)s 冷却中",
    "serving others": "其他模型照常服务",
    "held back: the upstream says none left": "暂缓：上游称额度已用完",
    "held back: rpm limit": "暂缓：已达每分钟请求上限",
    "held back: tpm limit": "暂缓：已达每分钟令牌上限",
    "held back: max in flight": "暂缓：并发请求已满",
    "held back: budget reached": "暂缓：已达预算",
    "%(n)s cooling for some models": "%(n)s 个仅对部分模型冷却",
    "%(n)s from %(k)s deleted keys": "其中 %(n)s 来自 %(k)s 个已删除的密钥",
    "%(n)s client requests, last 24 h": "最近 24 小时 %(n)s 个客户端请求",
    "Client success": "客户端成功率",
    "Attempt success": "尝试成功率",
}

# request log
ZH.update({
    "Search": "搜索",
    "model, client, key, error": "模型、客户端、密钥、错误",
    "refused by keymux": "被 keymux 拒绝",
    "Export CSV": "导出 CSV",
    "Export JSONL": "导出 JSONL",
})

# audit
ZH.update({
    "Audit log": "审计日志",
    "1 change": "1 项更改",
    "%(count)s changes": "%(count)s 项更改",
    "The audit log could not record a change at %(time)s UTC: %(reason)s":
        "审计日志未能记录 %(time)s UTC 的一项更改：%(reason)s",
    "Every change made through this UI: who (session and address), when and what. Never a"
    " secret: keys and tokens appear masked.":
        "通过本界面所做的每项更改：谁（会话和地址）、何时、做了什么。绝不包含密钥：密钥和令牌均以掩码显示。",
    "name, detail, session, address": "名称、详情、会话、地址",
    "Action": "操作",
    "Detail": "详情",
    "No change matches these filters.": "没有符合这些筛选条件的更改。",
    "The change was made, but the audit log could not record it: %(reason)s":
        "更改已生效，但审计日志未能记录它：%(reason)s",
    "key added": "添加了密钥",
    "key edited": "编辑了密钥",
    "key renamed": "重命名了密钥",
    "key enabled": "启用了密钥",
    "key disabled": "停用了密钥",
    "key deleted": "删除了密钥",
    "client added (token issued)": "添加了客户端（签发令牌）",
    "client edited": "编辑了客户端",
    "client token rotated (old one revoked)": "轮换了客户端令牌（旧令牌已吊销）",
    "client deleted (token revoked)": "删除了客户端（令牌已吊销）",
    "keys imported": "导入了密钥",
    "config exported (secrets as ${VAR})": "导出了配置（密钥写为 ${VAR}）",
    "config exported with secrets": "导出了配置（含明文密钥）",
    "cooldown reset": "重置了冷却",
    "every session signed out": "所有会话已退出登录",
})

# edges
ZH.update({
    "The request could not be understood.": "无法理解这个请求。",
    "This request is not allowed.": "不允许这个请求。",
    "There is no page at this address.": "这个地址没有页面。",
    "This page does not accept this kind of request.": "这个页面不接受这种请求。",
    "The upload is too large.": "上传的内容太大。",
    "Error": "错误",
    "Bad request": "请求有误",
    "Forbidden": "禁止访问",
    "Page not found": "页面不存在",
    "Method not allowed": "不允许的请求方法",
    "Conflict": "冲突",
    "Too large": "内容太大",
    "Server error": "服务器错误",
    "Nothing will be imported: the whole import is refused, because the gateway would reject"
    " the result: %(error)s": "不会导入任何密钥：整个导入被拒绝，因为网关会拒绝导入后的配置：%(error)s",
    "refused": "已拒绝",
    "the import is refused as a whole (see above)": "整个导入被拒绝（见上方）",
    "keys.yaml, line %(line)s: %(reason)s": "keys.yaml 第 %(line)s 行：%(reason)s",
    "keys.yaml: %(reason)s": "keys.yaml：%(reason)s",
    "keys.yaml cannot be parsed, so the admin password (admin.password_hash, which lives in that"
    " file) cannot be checked, and no other credential is set. Fix the file by hand at the line"
    " above, or start the UI with KEYMUX_ADMIN_TOKEN set: the token does not depend on the file,"
    " and once signed in the UI shows this error on the dashboard and the keys page.":
        "keys.yaml 无法解析，因此无法校验管理员密码（admin.password_hash 就在这个文件里），"
        "也没有设置其他凭据。请手动修复上面所示的那一行，或者设置 KEYMUX_ADMIN_TOKEN 后启动界面："
        "该令牌不依赖这个文件，登录后仪表盘和密钥页会显示这个错误。",
})

# tools
ZH.update({
    "Apply this action to every selected key?": "对所有选中的密钥执行此操作？",
    "key tested (one call to its provider, by the gateway)": "测试了密钥（由网关向其服务商发起一次调用）",
    "Selected keys": "选中的密钥",
    "Apply": "执行",
    "Select": "选择",
    "Select %(name)s": "选择 %(name)s",
    "One cheap call to the provider with this key, made by the gateway":
        "由网关用此密钥向服务商发起一次低成本调用",
    "Test": "测试",
    "This gateway cannot test keys yet (update keymux).": "此网关尚不能测试密钥（请更新 keymux）。",
    "Key %(name)s works: HTTP %(status)s in %(ms)s ms.": "密钥 %(name)s 可用：HTTP %(status)s，用时 %(ms)s 毫秒。",
    "Key %(name)s failed the test: %(what)s in %(ms)s ms; its state is now %(state)s.":
        "密钥 %(name)s 测试失败：%(what)s，用时 %(ms)s 毫秒；其状态现为 %(state)s。",
    "Choose what to do with the selected keys.": "请选择要对选中密钥执行的操作。",
    "Select at least one key.": "请至少选择一个密钥。",
    "Enabled %(n)s keys: %(names)s.": "已启用 %(n)s 个密钥：%(names)s。",
    "Disabled %(n)s keys: %(names)s.": "已停用 %(n)s 个密钥：%(names)s。",
    "Deleted %(n)s keys: %(names)s.": "已删除 %(n)s 个密钥：%(names)s。",
})

# tools: key health
ZH.update({
    "Health of %(name)s": "%(name)s 的健康状况",
    "Health over the last day": "最近一天的健康状况",
    "Last 24 hours": "最近 24 小时",
    "%(attempts)s attempts, %(failures)s failed (%(rate)s%% succeeded).":
        "%(attempts)s 次尝试，%(failures)s 次失败（成功率 %(rate)s%%）。",
    "No attempts with this key in the last day.": "最近一天没有使用此密钥的尝试。",
    "One cell per %(n)s minutes, oldest first": "每格 %(n)s 分钟，最早的在前",
    "%(attempts)s attempts, %(failures)s failed": "%(attempts)s 次尝试，%(failures)s 次失败",
    "now": "现在",
    "degraded": "部分失败",
    "down": "全部失败",
    "idle": "空闲",
    "State changes": "状态变化",
    "When (UTC)": "时间（UTC）",
    "Before": "之前",
    "After": "之后",
    "Why": "原因",
    "auth or quota": "认证或额度",
    "No state change in the last day.": "最近一天没有状态变化。",
})

# tools: usage by client
ZH.update({
    "Usage": "用量",
    "Usage by client": "按客户端统计用量",
    "Success rate": "成功率",
    "Last week": "最近一周",
    "Range": "范围",
    "From the request log: every request a client sent, the ones keymux refused itself included."
    " Errors are the answers of status 400 or more the client got.":
        "来自请求日志：客户端发送的每个请求，包括被 keymux 自身拒绝的请求。错误指客户端收到的状态码为 400 及以上的响应。",
    "No requests in this range.": "此范围内没有请求。",
    "Errors 4xx": "4xx 错误",
    "Errors 5xx": "5xx 错误",
    "Tokens in": "输入令牌",
    "Tokens out": "输出令牌",
    "Avg latency": "平均延迟",
    "Last request (UTC)": "最近请求（UTC）",
    "no client (open gateway, or no valid token)": "无客户端（开放网关，或令牌无效）",
    "removed": "已移除",
    "Total": "合计",

    # -- spend (dashboard, keys, usage)
    "Spend": "花费",
    "Spend today": "今日花费",
    "Spend this month": "本月花费",
    "Spend today / month": "今日 / 本月花费",
    "By key": "按密钥",
    "By client": "按客户端",
    "By provider": "按服务商",
    "Today": "今日",
    "This month": "本月",
    "month": "本月",
    "Requests this month": "本月请求数",
    "Spend per day, last 30 days": "最近 30 天每日花费",
    "Spend per day by": "每日花费分组",
    "Spend by": "花费分组",
    "Period": "时段",
    "Last 30 days": "最近 30 天",
    "Unknown price": "价格未知",
    "Cached in": "缓存输入",
    "unknown-priced requests: %(n)s": "价格未知的请求：%(n)s",
    "%(n)s min left": "剩余 %(n)s 分钟",
    "%(n)s h left": "剩余 %(n)s 小时",
    "%(n)s d left": "剩余 %(n)s 天",
    "No spend recorded yet.": "尚无花费记录。",
    "No spend recorded in this period.": "此时段内没有花费记录。",
    "No spend in the last 30 days.": "最近 30 天没有花费。",
    "%(n)s requests of unknown price are not in the chart.": "%(n)s 个价格未知的请求未计入图表。",
    "day %(day)s, month %(month)s (days start at %(reset)s, %(tz)s)":
        "日 %(day)s，月 %(month)s（每天从 %(reset)s 开始，%(tz)s）",
    "other": "其他",
    "From the gateway's spend ledger, days %(first)s to %(last)s as the gateway names them"
    " (routing.daily_reset, routing.timezone). Unknown: requests without a known price, counted"
    " in requests and tokens, never as $0.":
        "来自网关的花费账本，%(first)s 至 %(last)s（按网关的日期划分：routing.daily_reset、"
        "routing.timezone）。价格未知：没有已知价格的请求，计入请求数和 token，但从不计为 $0。",
    "Gateway": "网关",
    "Redis is unreachable (%(error)s): this page shows only this host's rows, from its own state store.":
        "无法连接 Redis（%(error)s）：此页只显示本机状态存储中的记录。",
    "Every gateway process of the fleet, from Redis.": "来自 Redis：集群中所有网关进程的记录。",
})
