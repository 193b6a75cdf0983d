@echo off
rem Quick start on Windows: double-click this file, or run it in cmd with the app's arguments
rem (quickstart.bat --checkpoint model.safetensors). quickstart.py does the work.
setlocal
set "PYTHON="
where py >nul 2>nul && set "PYTHON=py -3"
if not defined PYTHON (where python >nul 2>nul && set "PYTHON=python")
if not defined PYTHON (
    echo No Python found: install Python 3.10 or newer from python.org, then run this again.
    goto failed
)
%PYTHON% "%~dp0quickstart.py" %*
if %ERRORLEVEL% equ 0 exit /b 0
:failed
rem a double-clicked window would close before its message could be read
echo.
echo The quick start stopped: its message is above. Press a key to close this window.
pause >nul
exit /b 1
