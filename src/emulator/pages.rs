//! HTML the emulator serves: the login pages, the ASP.NET "Object moved" body, and IIS error
//! pages.
//!
//! The markup is written for this project and only looks like Creatio's. What matters is the
//! set of fingerprints clients look for (§4 and the addendum): the XHTML 1.0 Transitional
//! doctype, `IndexForm`, `NuiLogin.aspx?ReturnUrl=`, `Terrasoft.loginUrl = '…/AuthService.svc/Login'`,
//! and on .NET Core `data-loadbootstrap="bootstrap.login"`. Each appears within the first 2 KB,
//! because detectors scan only the start of the body (clio reads 4096 characters). Both login
//! pages are longer than 4 KB, so a detector cannot treat "short body" as "not a page".

use super::model::Flavour;

/// The ASP.NET forms-authentication redirect body. `location` is also the `Location` header.
pub(super) fn object_moved(location: &str) -> String {
    format!(
        "<html><head><title>Object moved</title></head><body><h2>Object moved to <a href=\"{}\">here</a>.</h2></body></html>\r\n",
        escape(location)
    )
}

/// The login page a browser would get after following the redirect. `return_url` must
/// already be encoded by `aspnet_url_encode`.
pub(super) fn login_page(flavour: Flavour, base_path: &str, return_url: &str) -> String {
    let template = match flavour {
        Flavour::NetFramework => NUI_LOGIN,
        Flavour::NetCore => CORE_LOGIN,
    };
    let languages: String = LANGUAGES
        .iter()
        .map(|(code, name)| format!("\t\t\t\t<option value=\"{code}\">{name}</option>\n"))
        .collect();
    template
        .replace("{BASE}", &escape(base_path))
        .replace("{RETURN_URL}", &escape(return_url))
        .replace("{VIEWSTATE}", &viewstate())
        .replace("{LANGUAGES}", &languages)
}

/// An IIS 10 detailed-error page for `403.0 - <reason>`, the form in which Creatio's portal
/// rule reached users (§7).
pub(super) fn forbidden(reason: &str, path: &str) -> String {
    FORBIDDEN
        .replace("{REASON}", &escape(reason))
        .replace("{PATH}", &escape(path))
}

/// The ASP.NET "resource cannot be found" page, used outside the app.
pub(super) fn not_found() -> String {
    NOT_FOUND.to_owned()
}

/// Escapes text for HTML element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A fixed base64-looking `__VIEWSTATE`. Real pages carry one of about this size.
fn viewstate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x2545_f491;
    let mut out: String = (0..1400)
        .map(|_| {
            // xorshift32: deterministic filler that looks like base64.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect();
    out.push_str("==");
    out
}

const LANGUAGES: &[(&str, &str)] = &[
    ("en-US", "English (United States)"),
    ("en-GB", "English (United Kingdom)"),
    ("de-DE", "Deutsch (Deutschland)"),
    ("fr-FR", "Français (France)"),
    ("es-ES", "Español (España)"),
    ("it-IT", "Italiano (Italia)"),
    ("nl-NL", "Nederlands (Nederland)"),
    ("pl-PL", "Polski (Polska)"),
    ("pt-BR", "Português (Brasil)"),
    ("uk-UA", "Українська (Україна)"),
    ("cs-CZ", "Čeština (Česko)"),
    ("tr-TR", "Türkçe (Türkiye)"),
];

const NUI_LOGIN: &str = r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" culture="en-US">
<head><meta http-equiv="X-UA-Compatible" content="IE=edge" /><meta http-equiv="Content-Type" content="text/html; charset=utf-8" /><meta name="viewport" content="width=device-width, initial-scale=1" />
	<title>Creatio</title>
	<link rel="shortcut icon" href="{BASE}/Login/favicon.ico" type="image/x-icon" />
	<script type="text/javascript">
		var Terrasoft = Terrasoft || {};
		Terrasoft.appFramework = "NETFRAMEWORK";
		Terrasoft.loginUrl = '{BASE}/ServiceModel/AuthService.svc/Login';
		Terrasoft.workspaceBaseUrl = '{BASE}/0';
		Terrasoft.loaderBaseUrl = '{BASE}';
		Terrasoft.returnUrl = decodeURIComponent('{RETURN_URL}'.replace(/\+/g, ' '));
	</script>
</head>
<body class="login-page">
	<form name="IndexForm" method="post" action="./NuiLogin.aspx?ReturnUrl={RETURN_URL}" id="IndexForm">
<div class="aspNetHidden">
<input type="hidden" name="__EVENTTARGET" id="__EVENTTARGET" value="" />
<input type="hidden" name="__EVENTARGUMENT" id="__EVENTARGUMENT" value="" />
<input type="hidden" name="__VIEWSTATE" id="__VIEWSTATE" value="{VIEWSTATE}" />
</div>
	<div id="login-container" class="login-container">
		<div class="login-logo"><img src="{BASE}/Login/logo.svg" alt="Creatio" /></div>
		<div class="login-fields">
			<label for="loginEdit-el">Login</label>
			<input type="text" id="loginEdit-el" name="loginEdit" autocomplete="username" maxlength="250" />
			<label for="passwordEdit-el">Password</label>
			<input type="password" id="passwordEdit-el" name="passwordEdit" autocomplete="current-password" maxlength="250" />
			<label for="languageEdit-el">Language</label>
			<select id="languageEdit-el" name="languageEdit">
{LANGUAGES}			</select>
			<div class="login-remember"><input type="checkbox" id="rememberMe" name="rememberMe" /><label for="rememberMe">Remember me</label></div>
			<input type="submit" id="t-comp-login-button" class="login-button" value="Log in" />
			<a class="login-forgot" href="{BASE}/Login/NuiLogin.aspx?forgotPassword=true">Forgot password?</a>
		</div>
		<div class="login-footer">
			<span>Creatio</span>
			<a href="https://www.creatio.com" target="_blank" rel="noopener">www.creatio.com</a>
		</div>
	</div>
	<noscript><div class="login-noscript">To use the system, enable JavaScript in your browser.</div></noscript>
	<script type="text/javascript" src="{BASE}/Login/login.js"></script>
	<script type="text/javascript">
		(function() {
			var form = document.getElementById("IndexForm");
			form.onsubmit = function(event) {
				event.preventDefault();
				var request = new XMLHttpRequest();
				request.open("POST", Terrasoft.loginUrl, true);
				request.setRequestHeader("Content-Type", "application/json; charset=utf-8");
				request.onload = function() {
					var answer = JSON.parse(request.responseText);
					if (answer.Code === 0) {
						window.location.href = Terrasoft.returnUrl || Terrasoft.workspaceBaseUrl;
					}
				};
				request.send(JSON.stringify({
					UserName: document.getElementById("loginEdit-el").value,
					UserPassword: document.getElementById("passwordEdit-el").value
				}));
			};
		})();
	</script>
	</form>
</body>
</html>
"#;

const CORE_LOGIN: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
	<meta charset="utf-8" />
	<meta name="viewport" content="width=device-width, initial-scale=1" />
	<title>Creatio</title>
	<script src="{BASE}/core/hash/Terrasoft/amd/bootstrap-loader.js" data-loadbootstrap="bootstrap.login" data-returnurl="{RETURN_URL}"></script>
	<link rel="shortcut icon" href="{BASE}/Login/favicon.ico" type="image/x-icon" />
	<link rel="preload" href="{BASE}/core/hash/Terrasoft/amd/require.js" as="script" />
	<link rel="preload" href="{BASE}/core/hash/Terrasoft/login/login-module.js" as="script" />
	<link rel="preload" href="{BASE}/core/hash/Terrasoft/login/login-view.css" as="style" />
	<style>
		html, body { height: 100%; margin: 0; font-family: "Montserrat", "Segoe UI", Arial, sans-serif; background: #f4f5f8; }
		.loading-mask { position: fixed; inset: 0; display: flex; align-items: center; justify-content: center; }
		.loading-spinner { width: 48px; height: 48px; border: 4px solid #dfe3eb; border-top-color: #0058ef; border-radius: 50%; animation: spin 0.9s linear infinite; }
		@keyframes spin { to { transform: rotate(360deg); } }
		.noscript-message { max-width: 480px; margin: 120px auto; padding: 24px; background: #fff; border-radius: 8px; box-shadow: 0 2px 8px rgba(0, 0, 0, 0.08); }
		.noscript-message h1 { font-size: 20px; margin: 0 0 12px; }
		.noscript-message p { font-size: 14px; line-height: 1.5; color: #333; }
	</style>
</head>
<body>
	<div id="loading-mask" class="loading-mask"><div class="loading-spinner"></div></div>
	<noscript>
		<div class="noscript-message">
			<h1>JavaScript is required</h1>
			<p>Creatio needs JavaScript to sign you in. Enable JavaScript in your browser settings and reload this page.</p>
			<p>Available languages:</p>
			<select name="languageEdit">
{LANGUAGES}			</select>
		</div>
	</noscript>
	<div id="login-root" data-viewstate="{VIEWSTATE}"></div>
	<script>
		window.Terrasoft = window.Terrasoft || {};
		Terrasoft.appFramework = "NETSTANDARD";
		Terrasoft.loginUrl = '{BASE}/ServiceModel/AuthService.svc/Login';
		Terrasoft.workspaceBaseUrl = '{BASE}';
	</script>
</body>
</html>
"#;

const FORBIDDEN: &str = r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<title>IIS 10.0 Detailed Error - 403.0 - {REASON}</title>
<style type="text/css">
body{margin:0;font-size:.7em;font-family:Verdana,Arial,Helvetica,sans-serif;}
.content-container{background:#FFF;width:96%;margin-top:8px;padding:10px;position:relative;}
h3{font-size:1.2em;margin:10px 0 0 0;color:#CC0000;}
h4{font-size:1.1em;margin:10px 0 0 0;}
th{text-align:left;padding-right:12px;}
</style>
</head>
<body>
<div id="content">
<div class="content-container">
<h3>HTTP Error 403.0 - {REASON}</h3>
<h4>You do not have permission to view this directory or page.</h4>
</div>
<div class="content-container">
<fieldset><h4>Most likely causes:</h4>
<ul><li>The service is not registered for this type of user.</li></ul>
</fieldset>
</div>
<div class="content-container">
<fieldset><h4>Detailed Error Information:</h4>
<table>
<tr><th>Module</th><td>ManagedPipelineHandler</td></tr>
<tr><th>Notification</th><td>ExecuteRequestHandler</td></tr>
<tr><th>Handler</th><td>System.ServiceModel.Activation.ServiceHttpHandlerFactory</td></tr>
<tr><th>Error Code</th><td>0x00000000</td></tr>
<tr><th>Requested URL</th><td>{PATH}</td></tr>
</table>
</fieldset>
</div>
</div>
</body>
</html>
"#;

const NOT_FOUND: &str = r#"<!DOCTYPE html>
<html>
<head><title>The resource cannot be found.</title></head>
<body>
<h1>Server Error in '/' Application.</h1>
<h2><i>The resource cannot be found.</i></h2>
<p><b>Description:</b> HTTP 404. The resource you are looking for (or one of its dependencies) could have been removed, had its name changed, or is temporarily unavailable. Please review the following URL and make sure that it is spelled correctly.</p>
</body>
</html>
"#;
